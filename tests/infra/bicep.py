"""Reads infra/*.bicep with pycep-parser and evaluates the few expression forms the templates use.

There is no Bicep compiler here, so the tests read pycep's syntax tree. In that tree a reference
(`maxDeliveryCount`) and a string literal (`'PT1M'`) are both plain strings: a string is taken
as a reference when it names a loop variable, a variable or a parameter of the same file, and as a
literal otherwise. What cannot be known from one file (a parameter without a default, a module's
output) evaluates to a `Ref`. Any other construct raises `Unsupported`, so a template change that
the tests cannot follow fails loudly instead of being compared wrongly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pycep import BicepParser

REPOSITORY = Path(__file__).resolve().parents[2]
INFRA = REPOSITORY / "infra"


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@functools.cache
def _parser() -> BicepParser:
    return BicepParser()


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return cast("dict[str, Any]", _parser().parse(file_path=path))


@dataclass(frozen=True)
class Ref:
    """A value only a deployment knows: a parameter without a default, or a dotted path such as identity.outputs.clientId."""

    path: str


class Unsupported(Exception):
    """The template uses an expression form this evaluator does not know."""


class Template:
    def __init__(self, path: Path, parameters: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.tree = parse(path)
        self.overrides = dict(parameters or {})

    @property
    def parameters(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self.tree.get("parameters", {}))

    @property
    def variables(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self.tree.get("variables", {}))

    @property
    def modules(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self.tree.get("modules", {}))

    def module_params(self, name: str) -> dict[str, Any]:
        """A module's `params` object as written (unevaluated)."""
        return cast("dict[str, Any]", self.modules[name]["config"]["params"])

    def variable(self, name: str) -> Any:
        return self.evaluate(name)

    def evaluate(self, value: Any, scope: Mapping[str, Any] | None = None) -> Any:
        scope = scope or {}
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, str):
            return self._name(value, scope)
        if isinstance(value, list):
            return [self.evaluate(item, scope) for item in value]
        if isinstance(value, dict):
            if "loop_type" in value:
                return self._loop(value, scope)
            if set(value) == {"function"}:
                return self._function(value["function"], scope)
            if set(value) == {"operator"}:
                return self._operator(value["operator"], scope)
            return {key: self.evaluate(item, scope) for key, item in value.items()}
        raise Unsupported(f"{self.path.name}: cannot evaluate {value!r}")

    def _name(self, name: str, scope: Mapping[str, Any]) -> Any:
        if name in scope:
            return scope[name]
        if name in self.variables:
            return self.evaluate(self.variables[name]["value"], scope)
        if name in self.overrides:
            return self.overrides[name]
        if name in self.parameters:
            parameter = self.parameters[name]
            # pycep gives a parameter without a default `"default": None`.
            return Ref(name) if parameter.get("default") is None else self.evaluate(parameter["default"], scope)
        return self._interpolate(name, scope) if "${" in name else name  # a literal

    def _interpolate(self, text: str, scope: Mapping[str, Any]) -> str:
        """'${a}-${b.c}': names and dotted paths are filled in; a Ref is shown as ${its path}; anything else stays."""

        def fill(match: re.Match[str]) -> str:
            head, *rest = match.group(1).split(".")
            try:
                value = self._property(_accessor([head, *rest]), scope) if rest else self._name(head, scope)
            except Unsupported:  # e.g. resourceToken, made of uniqueString(subscription().id, ...)
                return match.group(0)
            if isinstance(value, Ref):
                return "${" + value.path + "}"
            return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else match.group(0)

        return re.sub(r"\$\{([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\}", fill, text)

    def _loop(self, loop: dict[str, Any], scope: Mapping[str, Any]) -> list[Any]:
        loop_type = loop["loop_type"]
        if loop_type["type"] != "array" or loop.get("condition") is not None:
            raise Unsupported(f"{self.path.name}: loop {loop_type!r}")
        items = self.evaluate(loop_type["detail"]["array_name"], scope)
        if not isinstance(items, list):
            raise Unsupported(f"{self.path.name}: loop over {items!r}")
        item_name = loop_type["detail"]["item_name"]
        return [self.evaluate(loop["config"], {**scope, item_name: item}) for item in items]

    def _function(self, function: dict[str, Any], scope: Mapping[str, Any]) -> Any:
        kind = function["type"]
        arguments = [self.evaluate(argument, scope) for argument in function["parameters"].values()]
        if kind == "union" and all(isinstance(argument, dict) for argument in arguments):
            merged: dict[str, Any] = {}
            for argument in arguments:
                merged.update(argument)
            return merged
        if kind == "concat" and all(isinstance(argument, list) for argument in arguments):
            return [item for argument in arguments for item in argument]
        if kind == "empty" and len(arguments) == 1 and not isinstance(arguments[0], Ref):
            return not arguments[0]
        if kind == "string" and len(arguments) == 1 and isinstance(arguments[0], int | str):
            return str(arguments[0])
        if kind == "join" and len(arguments) == 2 and isinstance(arguments[0], list) and isinstance(arguments[1], str):
            return arguments[1].join(str(item) for item in arguments[0])
        if kind == "items" and len(arguments) == 1 and isinstance(arguments[0], dict):
            return [{"key": key, "value": item} for key, item in arguments[0].items()]
        raise Unsupported(f"{self.path.name}: function {kind}({arguments!r})")

    def _operator(self, operator: dict[str, Any], scope: Mapping[str, Any]) -> Any:
        kind, operands = operator["type"], operator["operands"]
        if kind == "property_accessor":
            return self._property(operands, scope)
        if kind == "conditional":
            condition = self.evaluate(operands["condition"], scope)
            if not isinstance(condition, bool):
                raise Unsupported(f"{self.path.name}: condition {condition!r}")
            return self.evaluate(operands["true_value" if condition else "false_value"], scope)
        if kind == "greater_than":
            left, right = self.evaluate(operands["operand_1"], scope), self.evaluate(operands["operand_2"], scope)
            if isinstance(left, int) and isinstance(right, int):
                return left > right
        raise Unsupported(f"{self.path.name}: operator {kind} {operands!r}")

    def _property(self, operands: dict[str, Any], scope: Mapping[str, Any]) -> Any:
        # pycep nests a.b.c to the right: a . (b . c); flatten it to a path.
        path = [operands["operand_1"]]
        rest = operands["operand_2"]
        while isinstance(rest, dict) and rest.get("operator", {}).get("type") == "property_accessor":
            path.append(rest["operator"]["operands"]["operand_1"])
            rest = rest["operator"]["operands"]["operand_2"]
        path.append(rest)
        if not all(isinstance(part, str) for part in path):
            raise Unsupported(f"{self.path.name}: property access {operands!r}")
        value = self._name(path[0], scope)
        for index, key in enumerate(path[1:], start=1):
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, Ref):  # a parameter that a deployment fills in
                return Ref(".".join([value.path, *path[index:]]))
            else:  # a module's output or a resource's property
                return Ref(".".join(path))
        return value


def _accessor(path: list[str]) -> dict[str, Any]:
    """pycep's operands for a.b.c, right-nested."""
    tail: Any = path[-1]
    for part in reversed(path[1:-1]):
        tail = {"operator": {"type": "property_accessor", "operands": {"operand_1": part, "operand_2": tail}}}
    return {"operand_1": path[0], "operand_2": tail}


def main_template(**parameters: Any) -> Template:
    return Template(INFRA / "main.bicep", parameters)


def function_app_template(**main_parameters: Any) -> Template:
    """infra/app/function-app.bicep with the parameters infra/main.bicep passes it."""
    main = main_template(**main_parameters)
    return Template(INFRA / "app" / "function-app.bicep", main.evaluate(main.module_params("functionApp")))

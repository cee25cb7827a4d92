"""Settings by the names a person sets: the environment variable of each field, problems in plain
words naming it, and the check that every ONBOARDING_* name set is one the app knows.

A mistyped name (ONBOARDING_POLICY_FIEL) is otherwise ignored without a word, and the app runs with
the default (here: no policy, every request denied), so each unknown name is reported with the
closest known one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

PREFIX = "ONBOARDING_"
# Read by `azd provision` from the azd environment (infra/main.parameters.json), not by the app; an
# operator may keep them beside the app's settings.
PROVISIONING_NAMES = (
    "ONBOARDING_TENANT_ID",
    "ONBOARDING_POLICY_FILE",
    "ONBOARDING_WELCOME_SENDER",
    "ONBOARDING_PYTHON_VERSION",
    "ONBOARDING_MAXIMUM_INSTANCE_COUNT",
    "ONBOARDING_MAX_CONCURRENT_CALLS",
    "ONBOARDING_ALWAYS_READY_INSTANCES",
    "ONBOARDING_OPERATOR_PRINCIPAL_ID",
    "ONBOARDING_UPSTREAM_SENDER_PRINCIPAL_IDS",
    "ONBOARDING_INTAKE_QUEUE_DEFINITIONS",
)
# Read by a command, not the app (onboard doctor's DoctorSettings): `onboard sandbox --write-env` writes them
# into the .env the app's local host reads too.
COMMAND_LINE_NAMES = ("ONBOARDING_SERVICEBUS_MANAGEMENT_CONNECTION",)
# Outputs of `azd provision` that the docs tell an operator to read (azd env get-value ...).
PROVISIONED_NAMES = ("ONBOARDING_IDENTITY_CLIENT_ID", "ONBOARDING_IDENTITY_PRINCIPAL_ID", "ONBOARDING_JOURNAL")
# A pattern says nothing to a person: what each field's pattern means.
PATTERN_RULES = {
    "tenant_id": "must be the tenant's id, a GUID (36 characters: hex digits and dashes)",
    "outcome_queue": "must be a queue name: 1-260 letters, digits, '.', '_', '/' or '-'",
}


def env_name(model: type[BaseSettings], field: str) -> str:
    """The environment variable a field is read from: its alias, else the prefix and its name."""
    info = model.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


def names_of(*models: type[BaseSettings]) -> frozenset[str]:
    return frozenset(env_name(model, field) for model in models for field in model.model_fields)


def in_plain_words(problem: Mapping[str, Any], rules: Mapping[str, str] = PATTERN_RULES) -> str:
    """One pydantic error as a person reads it: no regular expressions, no type names. `rules` says what
    a field (its dotted location) must be, where its pattern or type would say it in code."""
    kind, context = problem["type"], problem.get("ctx") or {}
    field = ".".join(str(part) for part in problem["loc"])
    if kind != "missing" and field in rules:
        return rules[field]
    words = {
        "missing": "is not set",
        "string_pattern_mismatch": "has the wrong form",
        "int_parsing": "must be a whole number",
        "float_parsing": "must be a number",
        "bool_parsing": "must be true or false",
        "url_parsing": "must be a URL (https://...)",
        "url_scheme": "must be a URL (https://...)",
        "greater_than_equal": f"must be at least {context.get('ge')}",
        "greater_than": f"must be more than {context.get('gt')}",
        "less_than_equal": f"must be at most {context.get('le')}",
        "string_too_short": "must not be empty"
        if context.get("min_length") == 1
        else f"must be at least {context.get('min_length')} characters",
        "string_too_long": f"must be at most {context.get('max_length')} characters",
        "literal_error": f"must be one of {context.get('expected')}",
    }
    if kind in words:
        return words[kind]
    message = str(problem["msg"]).removeprefix("Value error, ")
    return message.replace("value is not a valid email address", "is not an email address", 1)


def describe_problems(model: type[BaseSettings], error: ValidationError) -> str:
    """Every problem, "; "-separated, each by the environment variable a person sets."""
    problems = []
    for problem in error.errors():
        location = problem["loc"]
        text = in_plain_words(problem)
        problems.append(f"{env_name(model, str(location[0]))} {text}" if location else text)
    return "; ".join(problems)


def unknown_names(present: Iterable[str], known: Iterable[str]) -> dict[str, str | None]:
    """Each ONBOARDING_* name in `present` that is not `known`, with the closest known name (or None)."""
    known_names = sorted({*known, *PROVISIONING_NAMES, *PROVISIONED_NAMES, *COMMAND_LINE_NAMES})
    return {
        name: next(iter(difflib.get_close_matches(name, known_names, n=1, cutoff=0.8)), None)
        for name in sorted(present)
        if name.startswith(PREFIX) and name not in known_names
    }


def unknown_name_warning(name: str, closest: str | None, where: str) -> str:
    """One line for a person: which name, where it was set, and what it may have meant."""
    guess = f"; did you mean {closest}?" if closest else " (docs/settings.md lists every setting)"
    return f"{name} ({where}) is not a setting of this app and is ignored{guess}"

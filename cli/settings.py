"""One settings story for every `onboard` command: the environment, then `./.env` for the rest.

`.env` fills in only what the environment leaves unset, and goes into the process environment,
because that is where the function app and the local host read their settings (in Azure, app
settings are environment variables). Each command validates only the settings it needs, and a
problem is reported by environment variable name, the name a person sets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values, set_key
from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

ENV_FILE = Path(".env")
SETTINGS_HELP = "Settings are read from the environment, then from ./.env for whatever the environment leaves unset."

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class SettingsProblem(Exception):
    """Settings a command needs are missing or invalid; the message is one line for a person."""


def read_env_file(path: Path = ENV_FILE) -> None:
    for name, value in dotenv_values(path).items():
        if value is not None:
            os.environ.setdefault(name, value)


def write_env_file(environment: dict[str, str], path: Path = ENV_FILE) -> None:
    """Set these names in `path`, quoted (a connection string holds `;`), keeping its other lines."""
    path.touch(mode=0o600, exist_ok=True)
    for name, value in environment.items():
        set_key(path, name, value, quote_mode="always")


def env_name(model: type[BaseSettings], field: str) -> str:
    """The environment variable a field is read from: its alias, else the prefix and its name."""
    info = model.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


def describe_problems(model: type[BaseSettings], error: ValidationError) -> str:
    problems = []
    for problem in error.errors():
        text = "is not set" if problem["type"] == "missing" else problem["msg"].removeprefix("Value error, ")
        location = problem["loc"]
        problems.append(f"{env_name(model, str(location[0]))} {text}" if location else text)
    return "; ".join(problems)


def load_settings(model: type[SettingsT], *first: type[BaseSettings]) -> SettingsT:
    """`model` from the environment; `first` are parts of it checked on their own, so that their
    checks across fields are reported even when another field is missing."""
    problems: list[str] = []
    for part in first:
        try:
            part()
        except ValidationError as error:
            problems.append(describe_problems(part, error))
    try:
        settings = model()
    except ValidationError as error:
        problems.append(describe_problems(model, error))
    if problems:
        unique = "; ".join(dict.fromkeys("; ".join(problems).split("; ")))
        raise SettingsProblem(
            f"{unique}. Set them in the environment or .env "
            "(`onboard sandbox --write-env` writes the local stand-ins' settings; README, Settings)."
        )
    return settings

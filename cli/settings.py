"""One settings story for every `onboard` command: the environment, then `./.env` for the rest.

`.env` fills in only what the environment leaves unset, and goes into the process environment,
because that is where the function app and the local host read their settings (in Azure, app
settings are environment variables). Each command validates only the settings it needs, and a
problem is reported by environment variable name, the name a person sets, with where the settings
were looked for; an ONBOARDING_* name no setting has is reported with the closest one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values, set_key
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from shared.setting_names import describe_problems, names_of, unknown_name_warning, unknown_names
from shared.settings import Settings

ENV_FILE = Path(".env")
SETTINGS_HELP = "Settings are read from the environment, then from ./.env for whatever the environment leaves unset."

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class SettingsProblem(Exception):
    """Settings a command needs are missing or invalid; the message is one line for a person."""


def read_env_file(path: Path = ENV_FILE) -> list[str]:
    """Fill the environment from `path`; a warning line for each ONBOARDING_* name no setting has."""
    from_file = {name: value for name, value in dotenv_values(path).items() if value is not None}
    for name, value in from_file.items():
        os.environ.setdefault(name, value)
    known = names_of(Settings)
    in_file = unknown_names(from_file, known)
    in_environment = unknown_names(set(os.environ) - set(from_file), known)
    return [unknown_name_warning(name, closest, f"in {path.resolve()}") for name, closest in in_file.items()] + [
        unknown_name_warning(name, closest, "in the environment") for name, closest in in_environment.items()
    ]


def where_settings_are_read(path: Path = ENV_FILE) -> str:
    """Where a person sets what a command lacks: the .env file it read, or the directory that has none."""
    if path.exists():
        return f"in the environment or in {path.resolve()}"
    return (
        f"in the environment or in a .env file: there is none in {path.resolve().parent} (run the command "
        "in the directory that holds it)"
    )


def write_env_file(environment: dict[str, str], path: Path = ENV_FILE) -> None:
    """Set these names in `path`, quoted (a connection string holds `;`), keeping its other lines."""
    path.touch(mode=0o600, exist_ok=True)
    for name, value in environment.items():
        set_key(path, name, value, quote_mode="always")


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
            f"{unique}. Set them {where_settings_are_read()} "
            "(`onboard sandbox --write-env` writes the local stand-ins' settings; docs/settings.md)."
        )
    return settings

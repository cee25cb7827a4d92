"""What the app checks before it takes any message: its settings and its policy file.

function_app.py runs `check_start` when the host imports it to index the functions. A broken
setting or a policy file that does not load then stops the app at once, with one line naming the
setting: the Functions worker fails its start ("Initializing worker process failed" in the function
app's log, docs/functions-host.md), no trigger is indexed, and no message is consumed, instead of
every request crashing ten times until Service Bus dead-letters it. The local host runs the same
check each time it starts (function_app.py is imported once per process).

It also says what is legal but likely a mistake: no policy file (every request will be denied), and
ONBOARDING_* names the app does not know (a typo leaves the setting at its default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from shared.policy import OnboardingPolicy, PolicyFileError
from shared.setting_names import describe_problems, names_of, unknown_name_warning, unknown_names
from shared.settings import Settings

logger = logging.getLogger("onboarding.startup")
POLICY_SETTING = "ONBOARDING_POLICY_FILE"
NO_POLICY = f"{POLICY_SETTING} is not set: every request will be denied (PolicyDenied)"


class AppCannotStart(Exception):
    """A setting the app cannot run with; the message is one line naming it."""


def check_start(environment: Mapping[str, str] = os.environ) -> Settings:
    """The app's settings with its policy file loaded once, or AppCannotStart; warnings are logged."""
    for name, closest in unknown_names(environment, names_of(Settings)).items():
        logger.warning(unknown_name_warning(name, closest, "among the app settings"))
    try:
        settings = Settings()  # pydantic-settings reads the process environment, as the stages do
    except ValidationError as error:
        raise AppCannotStart(f"the app cannot start: {describe_problems(Settings, error)}") from None
    if settings.policy_file is None:
        logger.warning(NO_POLICY)
        return settings
    try:
        OnboardingPolicy.load(settings.policy_file)
    except PolicyFileError as error:
        raise AppCannotStart(
            f"the app cannot start: {POLICY_SETTING}={_shown(settings.policy_file)}: {error}"
        ) from None
    return settings


def _shown(path: Path) -> str:
    """The path as the app reads it: a relative one is read from the working directory."""
    return str(path) if path.is_absolute() else f"{path} (read as {Path.cwd() / path})"

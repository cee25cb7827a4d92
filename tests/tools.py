"""Tools some tests need beyond the dev venv (the Python 3.13 worker venv, the AsyncAPI parser).

Locally a missing tool skips the test and says how to install it (pytest -ra prints why). Under CI
(`CI=true`, as CI services set it and .ci/run does) it fails instead: a CI run must not go green by
testing less.
"""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_tool(present: bool, missing: str) -> None:
    """Go on when `present`; else skip, or under CI fail, with `missing` (what is absent and how to get it)."""
    if present:
        return
    if under_ci():
        pytest.fail(f"{missing} (CI=true: a missing tool fails instead of skipping)", pytrace=False)
    pytest.skip(missing)

"""A missing tool skips a test locally and fails it under CI."""

from __future__ import annotations

import re

import pytest

from tests.tools import require_tool


def test_a_present_tool_lets_the_test_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require_tool(True, "never said")


def test_a_missing_tool_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no parser: npm install it"):
        require_tool(False, "no parser: npm install it")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_a_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=re.escape("no parser: npm install it (CI=true")):
        require_tool(False, "no parser: npm install it")


def test_ci_false_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_tool(False, "no parser")

"""A small chaos run inside make test: 100 requests, two SIGKILLs of the host, one broker restart."""

from __future__ import annotations

import pytest

from tools.chaos import run_chaos

pytestmark = pytest.mark.stack  # the stand-ins, and the host as a child process


async def test_a_chaos_run_loses_and_duplicates_nothing() -> None:
    report = await run_chaos(requests=100, kills=2, emulator_restarts=1, seconds=150, seed=11)
    assert report.kills == 2 and report.emulator_restarts == 1
    assert report.ok, "\n".join(report.lines())
    assert sum(report.outcomes.values()) == report.sent == 100

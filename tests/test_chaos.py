"""A small chaos run inside make test: 100 requests (about a tenth with a lease of seconds), two SIGKILLs of
the host, one broker restart."""

from __future__ import annotations

import pytest

from tools.chaos import run_chaos

pytestmark = pytest.mark.stack  # the stand-ins, and the host as a child process


async def test_a_chaos_run_loses_and_duplicates_nothing() -> None:
    report = await run_chaos(requests=100, kills=2, emulator_restarts=1, seconds=150, seed=11)
    assert report.kills == 2 and report.emulator_restarts == 1
    assert report.ok, "\n".join(report.lines())
    # Every lease that began ended, and its end's offboard has one outcome too (lost counts any that did not).
    assert report.leased and report.expired
    assert sum(report.outcomes.values()) == report.sent + report.expired == 100 + report.expired

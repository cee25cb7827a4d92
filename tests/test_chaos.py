"""A small chaos run inside make test: 100 requests, two SIGKILLs of the host, one broker restart, bounded
at 300 s (it ends once every request has its outcome: about 100 s on an idle 2-core machine, three times
that on a loaded one). The requests are onboardings (about a tenth with a lease, half of those ending
during the kills), offboards and updates of people onboarded in the run, and a few invalid ones.

Then the drift sweep of everyone still onboarded, in pages of ten, with a few memberships broken first,
through two more kills and a broker restart (each kill while people are still unchecked): about 60 s more
on the loaded machine (the whole test 165 s to 210 s there), its wait bounded by a guard of its own."""

from __future__ import annotations

import pytest

from tools.chaos import run_chaos

pytestmark = pytest.mark.stack  # the stand-ins, and the host as a child process


async def test_a_chaos_run_loses_and_duplicates_nothing_and_its_interrupted_sweep_skips_and_doubles_nobody() -> None:
    report = await run_chaos(
        requests=100, kills=2, emulator_restarts=1, seconds=300, seed=11, sweep_kills=2, sweep_emulator_restarts=1
    )
    assert report.kills == 2 and report.emulator_restarts == 1
    assert report.ok, "\n".join(report.lines())
    assert report.actions["offboard"] and report.actions["update"] and report.leases_offboarded
    # Every lease that began ended with its own offboard's outcome, or an offboard ended it first (lost counts
    # any other); those ending during the kills are half of them.
    assert report.short_leased and report.expired
    assert sum(report.outcomes.values()) == report.sent + report.expired == 100 + report.expired
    # The sweep: every active membership checked once, each broken one reported once (report.ok), through
    # kills that each found people still unchecked.
    drift = report.drift
    assert drift.period and drift.active > len(drift.broken.keys)
    assert drift.broken.removed and drift.broken.sender_authentication
    assert drift.fanned_out == drift.active and drift.pages > 2
    assert drift.kills == drift.kills_mid_sweep == 2 and drift.emulator_restarts == 1
    assert sum(drift.events.values()) == len(drift.broken.keys)

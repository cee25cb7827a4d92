"""The benchmarks' code paths at a very small size, so that they cannot rot between `make bench` runs.

No figure is asserted (docs/performance.md: figures belong to the benchmarks); only what the run must have
done whatever the machine: here, every active membership checked once and one drift event per person broken.
"""

from __future__ import annotations

import pytest

from benchmarks.drift import CONTACT_BREAKS, GUEST_BREAKS, benchmark, report, tenant
from tests.waiting import HANG_GUARD_SECONDS

pytestmark = pytest.mark.stack


async def test_the_drift_benchmark_sweeps_everyone_and_reports_each_broken_person() -> None:
    knobs = tenant(latency_ms=0, rate=1000)
    # Every fifth person broken, so each kind of break occurs in 60 people.
    baseline, shared = await benchmark(60, 8, knobs, broken_every=5, within_seconds=HANG_GUARD_SECONDS)
    breaks = {person.broken for person in shared.population.people} - {None}
    assert breaks == set(CONTACT_BREAKS) | set(GUEST_BREAKS)
    for run in (baseline, shared):
        assert run.checked == run.active == len(run.population.people)
        assert run.events == run.population.broken > 0
        assert run.dead_lettered == 0
    assert report(shared, baseline, knobs)  # the report is made from these runs without failing

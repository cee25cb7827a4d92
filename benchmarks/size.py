"""Size: the chaos run (tools/chaos.py) at 1,000 requests and at a larger count, side by side (issue 28).

.venv/bin/python -m benchmarks.size [--requests 10000] [--baseline 1000]

Both runs have the same chaos (host kills, a broker restart, an unkind tenant); each is bounded in
time in proportion to its size. Printed: lost and duplicated (the promise: none), and what the
larger run cost per request against the baseline's, as ratios: a ratio near 1 means the cost grows
in proportion to the requests; the emulator must not be what limits the measurement. Nothing is
asserted here; `make chaos` exits 1 on a loss or a duplicate. docs/performance.md gives the figures.
"""

from __future__ import annotations

import argparse
import asyncio

from tools.chaos import Report, run_chaos

SECONDS_PER_1000 = 540  # the chaos run's own bound for 1,000 requests, scaled with the size
KILLS_PER_1000 = 5


async def chaos_at(requests: int) -> Report:
    bound = SECONDS_PER_1000 * max(1.0, requests / 1000)
    kills = max(KILLS_PER_1000, round(KILLS_PER_1000 * (requests / 1000) ** 0.5))
    report = await run_chaos(requests=requests, kills=kills, emulator_restarts=1, seconds=bound, seed=7)
    print(f"  {requests} requests (bounded at {bound:.0f} s):")
    for line in report.lines():
        print(f"    {line}")
    return report


def ratio(large: float | None, small: float | None) -> str:
    return f"{large / small:.2f}x" if large is not None and small else "n/a"


def compare(small: Report, large: Report) -> None:
    a, b = small.costs, large.costs
    if a is None or b is None:  # a run that failed before its end has no costs to compare
        print("  (no costs: a run ended early)")
        return

    def per_request(value: float | None, report: Report) -> float | None:
        return value / report.sent if value is not None and report.sent else None

    rows = {
        "requests/s": ratio(large.sent / large.seconds, small.sent / small.seconds),
        "emulator CPU per request": ratio(
            per_request(b.emulator_cpu_seconds, large), per_request(a.emulator_cpu_seconds, small)
        ),
        "stand-ins' CPU per request": ratio(
            per_request(b.stand_ins_cpu_seconds, large), per_request(a.stand_ins_cpu_seconds, small)
        ),
        "hosts' CPU per request": ratio(
            per_request(b.hosts_cpu_seconds, large), per_request(a.hosts_cpu_seconds, small)
        ),
        "journal rows per request": ratio(per_request(b.journal_rows, large), per_request(a.journal_rows, small)),
        "journal bytes per request": ratio(per_request(b.journal_bytes, large), per_request(a.journal_bytes, small)),
        "emulator database at the end": ratio(b.emulator_bytes, a.emulator_bytes),
        "a status count over the run": ratio(b.status_seconds, a.status_seconds),
    }
    print(f"  {large.sent} against {small.sent} requests (ratios; 1.00x per request = grows in proportion):")
    for name, value in rows.items():
        print(f"    {name}: {value}")
    verdict = "none lost, none duplicated" if small.ok and large.ok else "LOST OR DUPLICATED: see above"
    print(f"    the promise: {verdict}")


async def size(requests: int, baseline: int) -> None:
    small = await chaos_at(baseline)
    large = await chaos_at(requests)
    compare(small, large)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    arguments = parser.parse_args()
    print(f"Size: the chaos run at {arguments.baseline} and {arguments.requests} requests")
    asyncio.run(size(arguments.requests, arguments.baseline))


if __name__ == "__main__":
    main()

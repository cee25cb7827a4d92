"""Scale-out: 1, 2 and 4 local host processes against one emulator and one sandbox (issue 28).

.venv/bin/python -m benchmarks.scale_out [--hosts 1 2 4] [--requests 1000] [--rate 20]

The stand-ins run in a process of their own; each host is an `onboard host` process, as the
platform starts instances. The tenant limits the app, not the instance: a token bucket per face and
app (`--rate` calls/s, ten seconds' worth saved up, the shape of Graph's "per 10 seconds" quotas)
and Exchange's nine requests in flight. Each row runs its hosts as the Bicep would for
`maximumInstanceCount` = that many: `maxConcurrentCalls` is the one-instance figure divided among
them (docs/capacity.md). Every figure is printed beside the one-host row of the same invocation.
Nothing is asserted; docs/performance.md gives the figures and what they mean.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from azure.servicebus.aio import ServiceBusClient

from benchmarks.pipeline import GROUPS, OUTCOMES, SUCCEEDED, Logged, StandIns, requests_for
from cli.upstream import collect_outcomes, submit
from shared.contracts import DeadLetterReason, OnboardingRequest, OutcomeEvent
from shared.settings import SERVICEBUS_CONNECTION
from standins.host_process import HostProcess
from standins.local_host import HOST_JSON_OVERRIDE, host_options
from standins.tenant_sandbox import Knobs
from standins.tenant_sandbox.knobs import FACES, ConcurrencyLimit, Throttle

THROTTLED = 429
SAVED_UP_SECONDS = 10  # Graph's identity quotas are per 10 seconds: a bucket holds ten seconds' worth
EXCHANGE_IN_FLIGHT = 9  # Exchange's documented default per tenant (PowerShellMaxTenantConcurrency)


def tenant(rate: float, latency_ms: float) -> Knobs:
    bucket = Throttle(requests_per_second=rate, burst=max(1, round(rate * SAVED_UP_SECONDS)))
    return Knobs(
        latency_ms=latency_ms,
        throttle=dict.fromkeys(FACES, bucket),
        exchange_concurrency=ConcurrencyLimit(requests=EXCHANGE_IN_FLIGHT),
    )


def sized_for(instances: int) -> dict[str, str]:
    """The app settings of `instances` instances that together press the tenant as one instance does
    (docs/capacity.md): the one-instance maxConcurrentCalls (host.json) divided among them, and the
    tenant's Exchange requests in flight likewise."""
    one_instance = host_options(environment={}).max_concurrent_calls
    return {
        f"{HOST_JSON_OVERRIDE}maxConcurrentCalls": str(max(1, one_instance // instances)),
        "ONBOARDING_EXCHANGE_CONCURRENT_REQUESTS": str(max(1, EXCHANGE_IN_FLIGHT // instances)),
    }


@dataclass(frozen=True)
class HostsRun:
    hosts: int
    settings: Mapping[str, str]
    requests: int
    seconds: float
    outcomes: dict[str, OutcomeEvent]
    log: Logged

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes.values() if o.status in SUCCEEDED)

    @property
    def rate(self) -> float:
        return self.succeeded / self.seconds

    def calls_per_onboarding(self, face: str) -> float:
        """Answered calls (a 429 costs no token) per onboarding."""
        answered = sum(1 for e in self.log if e.face == face and e.status != THROTTLED)
        return answered / max(1, self.succeeded)

    @property
    def throttled(self) -> int:
        return sum(1 for e in self.log if e.status == THROTTLED)

    def throttled_on(self, face: str) -> int:
        return sum(1 for e in self.log if e.status == THROTTLED and e.face == face)

    def ceiling(self, knobs: Knobs, calls: Mapping[str, float]) -> float:
        """Onboardings/s the tenant's buckets allow over this run's time, for `calls` per onboarding
        on each face: each face's refill over the run plus what it had saved up, over the calls."""
        allowed = [
            (bucket.requests_per_second * self.seconds + bucket.burst) / calls[face] / self.seconds
            for face, bucket in knobs.throttle.items()
            if calls.get(face)
        ]
        return min(allowed, default=float("inf"))

    @property
    def not_succeeded(self) -> Counter[str]:
        failed = Counter(str(o.reason) for o in self.outcomes.values() if o.status not in SUCCEEDED)
        failed["(no outcome)"] += self.requests - len(self.outcomes)
        return +failed

    @property
    def ended_for_throttling(self) -> int:
        return sum(
            1
            for o in self.outcomes.values()
            if o.reason == DeadLetterReason.RETRIES_EXHAUSTED and "throttled" in o.description
        )


def mixed_requests(count: int, tag: str) -> list[OnboardingRequest]:
    """Requests spread over the demo tenant's three group kinds, in turn."""
    per_group = [requests_for(group, count, f"{tag}{kind[:3]}") for kind, group in GROUPS.items()]
    return [per_group[index % len(per_group)][index] for index in range(count)]


async def run_hosts(
    hosts: int,
    requests: list[OnboardingRequest],
    knobs: Knobs,
    *,
    within: float,
    settings: Mapping[str, str],
    shared_holds: bool = True,
) -> HostsRun:
    """`hosts` host processes on one set of stand-ins, timed from the submit; each host has handled
    requests before (deployed instances are running), and the tenant's buckets are full again.
    Without `shared_holds` each host journals to a file of its own, so no throttle hold is shared."""
    with StandIns(knobs) as stand_ins, tempfile.TemporaryDirectory() as own_journals:
        environments = [stand_ins.environment | dict(settings) for _ in range(hosts)]
        if not shared_holds:
            for index, environment in enumerate(environments):
                environment["ONBOARDING_JOURNAL"] = f"sqlite:{Path(own_journals) / f'journal-{index}.db'}"
        processes = [HostProcess(environment) for environment in environments]
        connection = stand_ins.environment[SERVICEBUS_CONNECTION]
        try:
            await asyncio.gather(*(p.start() for p in processes))
            async with ServiceBusClient.from_connection_string(connection) as client:
                warm_up = mixed_requests(6 * hosts, f"warm{hosts}-")
                await collect_outcomes(client, OUTCOMES, await submit(client, warm_up), within_seconds=120)
                stand_ins.clear_log()
                started = time.perf_counter()
                ids = await submit(client, requests)
                outcomes = await collect_outcomes(client, OUTCOMES, ids, within_seconds=within)
                seconds = time.perf_counter() - started
        finally:
            await asyncio.gather(*(p.stop() for p in processes))
        log = stand_ins.request_log()
    return HostsRun(hosts, settings, len(requests), seconds, outcomes, log)


def report(run: HostsRun, one_host: HostsRun, knobs: Knobs) -> str:
    # The calls an onboarding needs: the one-host row's. A row that needs more (repeats after a
    # 429) is measured against the same ceiling, so extra calls count against its goodput.
    needed: dict[str, float] = {face: one_host.calls_per_onboarding(face) for face in FACES}
    ceiling = run.ceiling(knobs, needed)
    per_onboarding = run.throttled / max(1, run.succeeded)
    base = one_host.throttled / max(1, one_host.succeeded)
    versus = f"{per_onboarding / base:.2f}x one host's" if base else "one host: none"
    calls = ", ".join(f"{run.calls_per_onboarding(face):.2f} {face}" for face in FACES)
    throttled = ", ".join(f"{run.throttled_on(face)} {face}" for face in FACES)
    sizes = "/".join(run.settings.values())
    return (
        f"  {run.hosts} host(s), each {sizes}: {run.rate:.2f} onboardings/s = "
        f"{100 * run.rate / ceiling:.1f}% of the ceiling {ceiling:.2f}/s (goal >= 95%); "
        f"429s per onboarding {per_onboarding:.2f} ({versus}; goal <= 1.5x; {throttled}); "
        f"calls per onboarding {calls}; "
        f"{run.succeeded}/{run.requests} succeeded, not succeeded: {dict(run.not_succeeded) or 'none'}, "
        f"RetriesExhausted {run.not_succeeded[DeadLetterReason.RETRIES_EXHAUSTED]}, "
        f"ended for throttling {run.ended_for_throttling}; {run.seconds:.0f} s"
    )


async def scale_out(host_counts: Sequence[int], count: int, knobs: Knobs, *, variants: bool = False) -> None:
    """One row per host count, sized and sharing their holds; with `variants`, the largest count again
    without each of the two, to show what each does (docs/performance.md)."""
    rows: list[tuple[str, int, dict[str, str], bool]] = [("", hosts, sized_for(hosts), True) for hosts in host_counts]
    if variants:
        most = max(host_counts)
        rows += [("not sized (host.json's concurrency each): ", most, {}, True)]
        rows += [("sized, each with a journal of its own (no shared holds): ", most, sized_for(most), False)]
    one_host: HostsRun | None = None
    for label, hosts, settings, shared in rows:
        requests = mixed_requests(count, f"s{hosts}{len(label)}-")
        run = await run_hosts(hosts, requests, knobs, within=1800, settings=settings, shared_holds=shared)
        one_host = one_host or run
        print("  " + label + report(run, one_host, knobs).lstrip(), flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 4], help="host processes per row")
    parser.add_argument("--requests", type=int, default=1000, help="requests per row")
    parser.add_argument("--rate", type=float, default=20, help="the tenant's calls/s per face and app")
    parser.add_argument(
        "--variants", action="store_true", help="the most hosts again, not sized and without shared holds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--latency-ms", type=float, default=50)
    arguments = parser.parse_args()
    knobs = tenant(arguments.rate, arguments.latency_ms)
    print(
        "Scale-out (each host: maxConcurrentCalls/Exchange requests in flight): "
        f"{arguments.requests} requests per row over three group kinds; the tenant allows "
        f"{arguments.rate:g} calls/s per face and app ({SAVED_UP_SECONDS} s saved up) and "
        f"{EXCHANGE_IN_FLIGHT} Exchange requests in flight; {arguments.latency_ms:g} ms per call"
    )
    asyncio.run(scale_out(arguments.hosts, arguments.requests, knobs, variants=arguments.variants))


if __name__ == "__main__":
    main()

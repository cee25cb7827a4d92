"""Latency: the time from send to outcome, on an idle system and at half the tenant's ceiling (issue 28).

.venv/bin/python -m benchmarks.latency [--requests 60] [--lag 1] [--rate 20]

One host process on stand-ins of their own, distribution-group requests. Each figure is printed
beside its floor, measured in the same run: the calls an onboarding cannot do without
(New-MailContact, then Add-DistributionGroupMember), timed against the same sandbox with the
product's own client, plus the replication lag the sandbox simulates between them. Nothing is
asserted; docs/performance.md gives the figures and what they mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

from azure.servicebus.aio import ServiceBusClient

from benchmarks.pipeline import GROUPS, OUTCOMES, SUCCEEDED, StandIns, requests_for
from benchmarks.scale_out import tenant
from cli.upstream import request_message
from shared.contracts import OnboardingRequest, OutcomeEvent, StageName
from shared.directory.exchange import ExchangeOnlineClient
from shared.settings import SERVICEBUS_CONNECTION
from standins.host_process import HostProcess
from standins.stack import sandbox_app_credential
from standins.tenant_sandbox import Knobs

DISTRIBUTION = GROUPS["distribution"]
FLOOR_SAMPLES = 10


@dataclass(frozen=True)
class Latencies:
    seconds: list[float]  # send to outcome, one per request that succeeded
    not_succeeded: int

    def percentile(self, share: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else float("nan")


async def floor_seconds(environment: Mapping[str, str], lag: float) -> tuple[float, float]:
    """The median of New-MailContact then Add-DistributionGroupMember (each timed, the replication
    lag waited out in between, untimed), and that plus the lag: what no onboarding can beat."""
    exchange = ExchangeOnlineClient(
        sandbox_app_credential(environment),
        tenant_id=environment["ONBOARDING_TENANT_ID"],
        base_url=environment["ONBOARDING_EXCHANGE_BASE_URL"],
    )
    samples = []
    try:
        for index in range(FLOOR_SAMPLES):
            address = f"floor-{index}@fabrikam.example"
            started = time.perf_counter()
            contact = await exchange.new_mail_contact(
                name=f"Floor {index}", external_email_address=address, display_name=f"Floor {index}"
            )
            created = time.perf_counter() - started
            await asyncio.sleep(lag)
            started = time.perf_counter()
            await exchange.add_distribution_group_member(DISTRIBUTION, contact.identity)
            samples.append(created + time.perf_counter() - started)
    finally:
        await exchange.close()
    calls = statistics.median(samples)
    return calls, calls + lag


class Upstream:
    """An upstream system as deployed: one sender and one outcome receiver kept open, each outcome timed
    as it arrives (opening a link per request would time the link, not the pipeline)."""

    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client
        self._sent: dict[str, float] = {}
        self._arrived: dict[str, tuple[float, OutcomeEvent]] = {}
        self._new_outcome = asyncio.Event()

    async def __aenter__(self) -> Upstream:
        self._sender = self._client.get_queue_sender(StageName.CREATE_CONTACT.value)
        self._receiver = self._client.get_queue_receiver(OUTCOMES)
        await self._sender.__aenter__()
        await self._receiver.__aenter__()
        self._receiving = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiving
        await self._receiver.__aexit__(None, None, None)
        await self._sender.__aexit__(None, None, None)

    async def send(self, request: OnboardingRequest) -> None:
        message = request_message(request, request.request_id or "")
        self._sent[request.request_id or ""] = time.perf_counter()
        await self._sender.send_messages(message)

    async def outcome(self, request: OnboardingRequest, within: float = 120) -> None:
        deadline = time.perf_counter() + within
        while (request.request_id or "") not in self._arrived and time.perf_counter() < deadline:
            self._new_outcome.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_outcome.wait(), timeout=1)

    def latencies(self, requests: list[OnboardingRequest]) -> Latencies:
        ids = [request.request_id or "" for request in requests]
        arrived = [self._arrived[i] for i in ids if i in self._arrived]
        seconds = [at - self._sent[o.request_id] for at, o in arrived if o.status in SUCCEEDED]
        return Latencies(seconds, len(ids) - len(seconds))

    async def _receive(self) -> None:
        while True:
            for message in await self._receiver.receive_messages(max_message_count=1, max_wait_time=5):
                outcome = OutcomeEvent.model_validate_json(b"".join(message.body))
                self._arrived.setdefault(outcome.request_id, (time.perf_counter(), outcome))
                self._new_outcome.set()
                await self._receiver.complete_message(message)


async def one_at_a_time(upstream: Upstream, requests: list[OnboardingRequest]) -> Latencies:
    """Each request sent when the one before has its outcome: the system is idle for each."""
    for request in requests:
        await upstream.send(request)
        await upstream.outcome(request)
    return upstream.latencies(requests)


async def at_a_steady_rate(upstream: Upstream, requests: list[OnboardingRequest], per_second: float) -> Latencies:
    """Requests sent one by one at `per_second`; each one's outcome timed from its own send."""
    start = time.perf_counter()
    for index, request in enumerate(requests):
        await asyncio.sleep(max(0.0, start + index / per_second - time.perf_counter()))
        await upstream.send(request)
    for request in requests:
        await upstream.outcome(request, within=300)
    return upstream.latencies(requests)


def describe(label: str, latencies: Latencies, floor: float) -> str:
    p50, p95 = latencies.percentile(0.5), latencies.percentile(0.95)
    return (
        f"  {label}: p50 {p50:.2f} s = {p50 / floor:.2f}x the floor (goal <= 1.5x), p95 {p95:.2f} s = "
        f"{p95 / floor:.2f}x; {len(latencies.seconds)} succeeded, {latencies.not_succeeded} did not"
    )


async def latency(knobs: Knobs, count: int) -> None:
    with StandIns(knobs) as stand_ins:
        environment = stand_ins.environment
        host = HostProcess(environment)
        await host.start()
        try:
            async with (
                ServiceBusClient.from_connection_string(environment[SERVICEBUS_CONNECTION]) as client,
                Upstream(client) as upstream,
            ):
                await one_at_a_time(upstream, requests_for(DISTRIBUTION, 3, "warm"))  # a running instance
                calls, floor = await floor_seconds(environment, knobs.replication_lag_seconds)
                print(
                    f"  floor: New-MailContact + Add-DistributionGroupMember {calls:.2f} s (median of "
                    f"{FLOOR_SAMPLES}) + replication lag {knobs.replication_lag_seconds:g} s = {floor:.2f} s"
                )
                stand_ins.clear_log()
                idle = await one_at_a_time(upstream, requests_for(DISTRIBUTION, count, "idle"))
                print(describe(f"idle, {count} requests one at a time", idle, floor), flush=True)
                exchange_calls = sum(1 for e in stand_ins.request_log() if e.face == "exchange" and e.status != 429)
                # Half the ceiling the Exchange bucket allows for the calls these very onboardings needed.
                rate = knobs.throttle["exchange"].requests_per_second
                half = rate / (exchange_calls / max(1, len(idle.seconds))) / 2
                stand_ins.clear_log()
                loaded = await at_a_steady_rate(upstream, requests_for(DISTRIBUTION, 2 * count, "half"), half)
                print(describe(f"at half the ceiling ({half:.2f} onboardings/s), {2 * count} requests", loaded, floor))
        finally:
            await host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60, help="idle requests (twice as many at half the ceiling)")
    parser.add_argument("--lag", type=float, default=1.0, help="the sandbox's replication lag, seconds")
    parser.add_argument("--rate", type=float, default=20, help="the tenant's calls/s per face and app")
    parser.add_argument("--latency-ms", type=float, default=50)
    arguments = parser.parse_args()
    knobs = tenant(arguments.rate, arguments.latency_ms).model_copy(update={"replication_lag_seconds": arguments.lag})
    print(
        f"Latency, send to outcome (distribution group; {arguments.latency_ms:g} ms per call, replication lag "
        f"{arguments.lag:g} s, the scale-out benchmark's tenant limits)"
    )
    asyncio.run(latency(knobs, arguments.requests))


if __name__ == "__main__":
    main()

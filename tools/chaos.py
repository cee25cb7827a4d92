"""`make chaos`: many requests while the tenant misbehaves, the host is killed and the broker restarts.

Everything runs on the local stand-ins: the emulator keeps its messages in SQLite (so a restart
loses nothing it acknowledged), the sandbox answers with random 503s, throttling and replication
lag, and the local host runs as a child process that is killed with SIGKILL at random moments and
started again. At the end it counts, from the outcome queue, the tenant and the queues: requests
sent, outcomes by status, lost (no outcome), duplicated (more than one outcome for a request, or
more than one contact, guest or membership for one person and group), and what is left in each
queue. It exits 1 when anything was lost or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from rich.console import Console

from shared.contracts import OutcomeEvent, OutcomeStatus, StageName
from shared.journal import open_journal
from shared.leases import NOTICE_SUBJECT, expiry_request_id, lease_key
from shared.settings import SERVICEBUS_CONNECTION
from standins.host_process import HostProcess
from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator
from standins.stack import LocalStack, local_stack
from standins.tenant_sandbox import Knobs

OUTCOMES = "onboarding-outcomes"
GROUPS = ("partners@contoso.com", "suppliers-secure@contoso.com", "project-falcon@contoso.com")
QUEUES = (*(stage.value for stage in StageName), OUTCOMES, "leases")
UNKIND_TENANT = {
    "error_rate": {"graph": {"rate": 0.05}, "exchange": {"rate": 0.05}},
    "throttle": {
        "graph": {"requests_per_second": 60, "burst": 30},
        "exchange": {"requests_per_second": 60, "burst": 30},
    },
    "replication_lag_seconds": 1.0,
}
# A share of the valid requests carry a lease of LEASE_SECONDS (docs/leases.md): its end sends an offboard
# request through the same chaos, whose outcome is counted like any other.
# The end lies past the moment the run's last request is accepted (about LEASE_SECONDS_PER_REQUEST each on
# the 2-core machine, through the chaos): an end already past at intake would be refused (InvalidRequest).
LEASED_SHARE = 0.1
LEASE_SECONDS = (20.0, 60.0)
LEASE_SECONDS_PER_REQUEST = 0.25
LEASE_NOTICE_SECONDS = "10"
_DONE = {OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS}


@dataclass(frozen=True)
class Costs:
    """What a run cost the stand-ins, the hosts and the journal, to see how each grows with the run's
    size (docs/performance.md, "Size"): the emulator must not be what limits the measurement."""

    emulator_cpu_seconds: float | None  # the broker's thread, every emulator of the run (None: not Linux)
    emulator_bytes: int  # its SQLite file and write-ahead log at the end
    journal_rows: int
    journal_bytes: int
    status_seconds: float  # one `onboard status --watch` count over the whole run, read at the end
    stand_ins_cpu_seconds: float  # this process: the emulator, the sandbox and the driver
    hosts_cpu_seconds: float  # every host process, the killed ones included

    def lines(self, requests: int) -> list[str]:
        per = 1000 / max(1, requests)  # milliseconds (or bytes per 1,000) per request
        emulator = f"{self.emulator_cpu_seconds * per:.1f} ms" if self.emulator_cpu_seconds is not None else "n/a"
        return [
            f"CPU per request: emulator thread {emulator}, stand-ins' process {self.stand_ins_cpu_seconds * per:.1f} ms, "
            f"hosts {self.hosts_cpu_seconds * per:.1f} ms",
            f"emulator database {self.emulator_bytes / 1024:.0f} KiB at the end; journal {self.journal_rows} rows "
            f"({self.journal_rows / max(1, requests):.1f} per request), {self.journal_bytes / 1024:.0f} KiB; "
            f"a status count over the run {1000 * self.status_seconds:.0f} ms",
        ]


@dataclass
class Report:
    sent: int = 0
    invalid_sent: int = 0
    leased: set[str] = field(default_factory=set)  # request ids sent with an end
    expired: int = 0  # leases whose end's offboard has an outcome
    notices: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # by status
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    left: dict[str, int] = field(default_factory=dict)  # queue -> messages still there
    kills: int = 0
    emulator_restarts: int = 0
    seconds: float = 0.0
    costs: Costs | None = None

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{status} {count}" for status, count in sorted(self.outcomes.items()))
        left = ", ".join(f"{queue} {count}" for queue, count in self.left.items() if count) or "nothing"
        return [
            f"requests sent: {self.sent} ({self.invalid_sent} invalid on purpose, {len(self.leased)} with a lease)",
            f"leases ended: {self.expired} (their offboard's outcome counted below), notices: {self.notices}",
            f"outcomes: {sum(self.outcomes.values())} ({statuses})",
            f"lost (no outcome): {len(self.lost)}" + (f" e.g. {self.lost[:5]}" if self.lost else ""),
            f"duplicated: {len(self.duplicated)}" + (f" e.g. {self.duplicated[:5]}" if self.duplicated else ""),
            f"left in queues and dead-letter queues: {left}",
            f"host killed {self.kills} times, emulator restarted {self.emulator_restarts} times, "
            f"{self.seconds:.0f} s in all ({self.sent / self.seconds if self.seconds else 0:.1f} requests/s)",
            *(self.costs.lines(self.sent) if self.costs else []),
        ]


def request_body(index: int, rng: random.Random, invalid_share: float, requests: int) -> tuple[str, bytes, bool]:
    request_id = f"chaos-{index:05d}"
    if rng.random() < invalid_share:
        return request_id, json.dumps({"request_id": request_id, "external_email": "nope"}).encode(), True
    body: dict[str, object] = {
        "request_id": request_id,
        "external_email": f"person{index:05d}@fabrikam.example",
        "display_name": f"Chaos Person {index:05d}",
        "group": {"smtp_address": GROUPS[index % len(GROUPS)]},
        "source_system": "demo-hr",
    }
    if rng.random() < LEASED_SHARE:
        lease = rng.uniform(*LEASE_SECONDS) + requests * LEASE_SECONDS_PER_REQUEST
        body["expires_at"] = (datetime.now(UTC) + timedelta(seconds=lease)).isoformat()
    return request_id, json.dumps(body).encode(), False


async def run_chaos(
    *, requests: int, kills: int, emulator_restarts: int, seconds: float, seed: int, invalid_share: float = 0.05
) -> Report:
    rng = random.Random(seed)  # noqa: S311  # repeatable chaos, not cryptography
    report = Report()
    started, started_at, cpu = time.monotonic(), datetime.now(UTC), _cpu_seconds()
    emulator_cpu: list[float | None] = []  # each emulator's, read before it stops
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "servicebus.db"
        config = EmulatorConfig.default().with_overrides(lock_duration=timedelta(seconds=5))
        knobs = Knobs.model_validate({**UNKIND_TENANT, "random_seed": seed})
        settings = {"ONBOARDING_LEASE_NOTICE_SECONDS": LEASE_NOTICE_SECONDS}
        with local_stack(
            emulator_config=config, servicebus_database=database, sandbox_knobs=knobs, settings=settings
        ) as stack:
            emulator = stack.emulator
            host = HostProcess(stack.environment)
            await host.start()
            try:
                ids = await send_requests(stack, requests, rng, invalid_share, report)
                deadline = started + seconds
                chaos_until = time.monotonic() + min(seconds / 2, 15 + requests * 0.05)
                moments = sorted(rng.uniform(1, chaos_until - time.monotonic()) for _ in range(kills))
                restart_at = {rng.randrange(len(moments) + 1) for _ in range(emulator_restarts)}
                origin = time.monotonic()
                for index, moment in enumerate([*moments, None]):
                    if index in restart_at:
                        emulator_cpu.append(emulator.cpu_seconds())
                        emulator = await _restart(emulator, config, database)
                        report.emulator_restarts += 1
                    if moment is None:
                        break
                    await asyncio.sleep(max(0.0, origin + moment - time.monotonic()))
                    await host.kill()
                    report.kills += 1
                    await host.start()
                outcomes = await every_outcome(stack, lambda seen: set(ids) | _ends(report, seen), deadline, report)
                await host.stop()
                report.seconds = time.monotonic() - started
                count_outcomes(report, [*ids, *sorted(_ends(report, outcomes))], outcomes, stack)
                report.left = await _left_in_queues(emulator.connection_string)
                emulator_cpu.append(emulator.cpu_seconds())
                report.costs = await _costs(stack, database, started_at, cpu, emulator_cpu)
            finally:
                await host.stop()
                if emulator is not stack.emulator:
                    emulator.stop()
    return report


def _cpu_seconds() -> tuple[float, float]:
    """CPU time of this process and of its reaped children (the host processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def _costs(
    stack: LocalStack,
    emulator_database: Path,
    started_at: datetime,
    cpu_at_start: tuple[float, float],
    emulator_cpu: list[float | None],
) -> Costs:
    (own, children), (own_before, children_before) = _cpu_seconds(), cpu_at_start
    with contextlib.closing(sqlite3.connect(stack.journal_database)) as journal_db:
        (rows,) = journal_db.execute("SELECT COUNT(*) FROM transitions").fetchone()
    journal = open_journal(stack.environment["ONBOARDING_JOURNAL"])
    assert journal is not None  # the local stack always journals
    try:
        counting = time.perf_counter()
        await journal.tally(started_at)
        status_seconds = time.perf_counter() - counting
    finally:
        await journal.close()
    known = [seconds for seconds in emulator_cpu if seconds is not None]
    return Costs(
        emulator_cpu_seconds=sum(known) if len(known) == len(emulator_cpu) else None,
        emulator_bytes=_file_bytes(emulator_database),
        journal_rows=rows,
        journal_bytes=_file_bytes(stack.journal_database),
        status_seconds=status_seconds,
        stand_ins_cpu_seconds=own - own_before,
        hosts_cpu_seconds=children - children_before,
    )


async def send_requests(
    stack: LocalStack, requests: int, rng: random.Random, invalid_share: float, report: Report
) -> list[str]:
    """`requests` requests on create-contact, a share of them invalid on purpose; their ids."""
    ids: list[str] = []
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_sender(StageName.CREATE_CONTACT.value) as sender,
    ):
        batch: list[ServiceBusMessage] = []
        for index in range(requests):
            request_id, body, invalid = request_body(index, rng, invalid_share, requests)
            ids.append(request_id)
            report.invalid_sent += invalid
            if b"expires_at" in body:
                report.leased.add(request_id)
            batch.append(ServiceBusMessage(body, message_id=request_id, content_type="application/json"))
            if len(batch) == 50:
                await sender.send_messages(batch)
                batch = []
        if batch:
            await sender.send_messages(batch)
    report.sent = len(ids)
    return ids


async def _restart(emulator: ServiceBusEmulator, config: EmulatorConfig, database: Path) -> ServiceBusEmulator:
    emulator.stop()
    await asyncio.sleep(0.5)
    again = ServiceBusEmulator(config, port=emulator.port, database=database)
    again.start()
    return again


def _ends(report: Report, outcomes: list[OutcomeEvent]) -> set[str]:
    """The offboard request each lease that began sends at its end: one per leased onboarding that succeeded."""
    return {
        expiry_request_id(
            lease_key(f"person{o.request_id.removeprefix('chaos-')}@fabrikam.example", o.group.id), o.expires_at
        )
        for o in outcomes
        if o.request_id in report.leased and o.status in _DONE and o.group is not None and o.expires_at is not None
    }


async def every_outcome(
    stack: LocalStack,
    wanted: set[str] | Callable[[list[OutcomeEvent]], set[str]],
    deadline: float,
    report: Report | None = None,
) -> list[OutcomeEvent]:
    """Every outcome until each wanted request has one (then a little longer, to see duplicates); which are
    wanted may grow with what arrives (a lease's end sends a request of its own).

    Counted once per sequence number: an outcome message delivered again because its completion
    was lost (a lock that ran out on this busy machine) is the same event, not a duplicate; a
    second outcome for a request is a second message, with its own sequence number.
    """
    outcomes: list[OutcomeEvent] = []
    seen: set[int] = set()
    grace: float | None = None
    async with ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client:
        while time.monotonic() < (grace or deadline):
            try:
                async with client.get_queue_receiver(OUTCOMES) as receiver:
                    batch = await receiver.receive_messages(max_message_count=100, max_wait_time=2)
                    for message in batch:
                        if (number := message.sequence_number or 0) not in seen:
                            seen.add(number)
                            if message.subject == NOTICE_SUBJECT:  # a lease's notice, not an outcome
                                if report is not None:
                                    report.notices += 1
                            else:
                                outcomes.append(OutcomeEvent.model_validate_json(b"".join(message.body)))
                        await receiver.complete_message(message)
            except Exception:  # the broker restarting under us: try again
                await asyncio.sleep(1)
                continue
            wanting = wanted(outcomes) if callable(wanted) else wanted
            if grace is None and wanting <= {o.request_id for o in outcomes}:
                grace = time.monotonic() + 5
    return outcomes


def count_outcomes(report: Report, ids: list[str], outcomes: list[OutcomeEvent], stack: LocalStack) -> None:
    """Outcomes by status, and what was lost or duplicated: in the outcomes and in the sandbox's directory."""
    per_request = Counter(o.request_id for o in outcomes)
    report.expired = sum(1 for request_id in ids if request_id.startswith("lease-") and per_request[request_id])
    report.outcomes = Counter(str(o.status) for o in outcomes)
    report.lost = [request_id for request_id in ids if per_request[request_id] == 0]
    report.duplicated = [request_id for request_id, n in per_request.items() if n > 1]
    directory = stack.sandbox.directory
    contacts = Counter(c.external_email_address.lower() for c in directory.contacts.values())
    report.duplicated += [f"contact {address}" for address, n in contacts.items() if n > 1]
    guests = Counter(u.mail.lower() for u in directory.users.values())
    report.duplicated += [f"user {address}" for address, n in guests.items() if n > 1]
    for address in GROUPS:
        group = directory.group_by_identity(address)
        members = Counter(group.members) if group is not None else Counter()
        report.duplicated += [f"member {member} of {address}" for member, n in members.items() if n > 1]


async def _left_in_queues(connection_string: str) -> dict[str, int]:
    left: dict[str, int] = {}
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        for queue in QUEUES:
            for sub_queue, name in ((None, queue), (ServiceBusSubQueue.DEAD_LETTER, f"{queue}/$deadletterqueue")):
                async with client.get_queue_receiver(queue, sub_queue=sub_queue) as receiver:
                    left[name] = len(await receiver.peek_messages(max_message_count=1000))
    return left


def main(
    requests: Annotated[int, typer.Option(help="How many requests to send.")] = 1000,
    kills: Annotated[int, typer.Option(help="How many times the host is killed with SIGKILL.")] = 5,
    emulator_restarts: Annotated[int, typer.Option(help="How many times the emulator is restarted.")] = 1,
    seconds: Annotated[float, typer.Option(help="Give up waiting for outcomes after this long.")] = 540,
    seed: Annotated[int, typer.Option(help="Random seed for the kills and the tenant's faults.")] = 7,
) -> None:
    """Onboard many requests through chaos and check that none is lost or duplicated."""
    report = asyncio.run(
        run_chaos(requests=requests, kills=kills, emulator_restarts=emulator_restarts, seconds=seconds, seed=seed)
    )
    console = Console()
    for line in report.lines():
        console.print(line, highlight=False)
    raise typer.Exit(0 if report.ok else 1)


if __name__ == "__main__":
    typer.run(main)

"""`make chaos`: many requests while the tenant misbehaves, the host is killed and the broker restarts.

Everything runs on the local stand-ins: the emulator keeps its messages in SQLite (so a restart
loses nothing it acknowledged), the sandbox answers with random 503s, throttling and replication
lag, and the local host runs as a child process that is killed with SIGKILL at random moments and
started again. The requests are a person's whole stay: onboardings (some with a lease that ends
during the kills, some with one that ends after them), offboards and updates of people onboarded
earlier in the run (each sent once its person's onboarding has an outcome, as upstream would), and a
few invalid on purpose. At the end it counts, from the outcome queue, the lease book, the tenant and
the queues: requests sent by action, outcomes by status, leases that ended (with their own offboard's
outcome) or were ended early by an offboard, lost (no outcome, or a lease that should have ended and
did not), duplicated (more than one outcome for a request, or more than one contact, guest or
membership for one person and group), and what is left in each queue.

Then, once every request has its outcome, the drift watch's sweep (tools/chaos_drift.py): a few of the
onboarded memberships are broken in the sandbox, the timer starts the sweep in small pages, and the host is
killed (and the broker restarted) while it runs; at the end the roster and the outcome queue say whether an
active membership was skipped or checked twice, and whether each broken one, and only those, was reported by
exactly one drift event. It exits 1 when anything was lost, duplicated, skipped or reported twice or wrongly.
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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import typer
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from rich.console import Console

from shared.contracts import DeadLetterReason, OutcomeEvent, OutcomeStatus, RequestAction, StageName
from shared.drift.events import DRIFT_SUBJECT
from shared.drift.model import Sweep
from shared.journal import open_journal
from shared.journal.model import LeaseState
from shared.journal.ports import LeaseBook
from shared.journal.sqlite import SqliteJournal
from shared.leases import NOTICE_SUBJECT, expiry_request_id, lease_key
from shared.outbox import peeked
from shared.queues import DRIFT_QUEUE
from shared.settings import SERVICEBUS_CONNECTION
from standins.host_process import HostProcess
from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator
from standins.stack import LocalStack, local_stack
from standins.tenant_sandbox import Knobs
from tools.chaos_drift import (
    NO_SWEEP_SCHEDULE,
    DriftReport,
    active_memberships,
    break_memberships,
    count_recorded_checks,
    drift_event,
    least_fan_out_seconds,
    recorded_checks,
    sweep_settings,
)

OUTCOMES = "onboarding-outcomes"
GROUPS = ("partners@contoso.com", "suppliers-secure@contoso.com", "project-falcon@contoso.com")
QUEUES = (*(stage.value for stage in StageName), OUTCOMES, "leases", "drift")
UNKIND_TENANT = {
    "error_rate": {"graph": {"rate": 0.05}, "exchange": {"rate": 0.05}},
    "throttle": {
        "graph": {"requests_per_second": 60, "burst": 30},
        "exchange": {"requests_per_second": 60, "burst": 30},
    },
    "replication_lag_seconds": 1.0,
}
# Of the valid requests, these shares are an offboard or an update of someone onboarded in the run
# (each person gets at most one); half the offboards go to someone with a lease while half of the leased
# people are left, so that an offboard ending a lease early (docs/leases.md) is part of the run too.
OFFBOARD_SHARE = 0.1
UPDATE_SHARE = 0.1
LEASED_OFFBOARD_SHARE = 0.5
# A share of the onboardings carry a lease: its end sends an offboard request through the same chaos,
# whose outcome is counted like any other. Half are short: sent first, at the head of the queue, they
# end a few seconds after they are accepted, while the host is being killed. The others end past the
# moment the run's last request is accepted (about LEASE_SECONDS_PER_REQUEST each on the 2-core
# machine, through the chaos). An end already past when its onboarding is accepted is refused
# (InvalidRequest): one outcome too, counted apart.
LEASED_SHARE = 0.1
SHORT_LEASE_SHARE = 0.5
SHORT_LEASE_SECONDS = (12.0, 20.0)
LEASE_SECONDS = (20.0, 60.0)
LEASE_SECONDS_PER_REQUEST = 0.25
LEASE_NOTICE_SECONDS = "10"
_DONE = {OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS}
LeaseLength = Literal["short", "long"]
Misdeed = Literal["kill", "restart"]
# A guard against a sweep that never ends (its counts then say who was skipped), from the moment it may start,
# longer for a longer roster: at 1,000 requests the sweep of 578 people took 47 s through 3 kills and a broker
# restart (docs/reliability.md).
SWEEP_GUARD_SECONDS = 300.0
SWEEP_GUARD_SECONDS_PER_MEMBERSHIP = 0.5


@dataclass(frozen=True)
class Planned:
    """One request of the run. A follow-up (an offboard or an update) waits for its person's onboarding."""

    request_id: str
    action: RequestAction | None  # None: invalid on purpose
    person: int  # the person's number: their address and group
    lease: LeaseLength | None = None
    after: str | None = None  # the onboarding whose outcome a follow-up waits for

    def body(self, requests: int, rng: random.Random) -> bytes:
        if self.action is None:
            return json.dumps({"request_id": self.request_id, "external_email": "nope"}).encode()
        request: dict[str, object] = {
            "request_id": self.request_id,
            "action": self.action.value,
            "external_email": person_address(self.person),
            "group": {"smtp_address": GROUPS[self.person % len(GROUPS)]},
            "source_system": "demo-hr",
        }
        if self.action is RequestAction.ONBOARD:
            request["display_name"] = f"Chaos Person {self.person:05d}"
        elif self.action is RequestAction.UPDATE:
            request |= {"display_name": f"Chaos Person {self.person:05d} (renamed)", "last_name": "Renamed"}
        if self.lease is not None:
            seconds = (
                rng.uniform(*SHORT_LEASE_SECONDS)
                if self.lease == "short"
                else rng.uniform(*LEASE_SECONDS) + requests * LEASE_SECONDS_PER_REQUEST
            )
            request["expires_at"] = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
        return json.dumps(request).encode()

    def message(self, requests: int, rng: random.Random) -> ServiceBusMessage:
        return ServiceBusMessage(self.body(requests, rng), message_id=self.request_id, content_type="application/json")


def person_address(person: int) -> str:
    return f"person{person:05d}@fabrikam.example"


def chaos_request_id(index: int) -> str:
    """The id of the run's request number `index`; person `index`'s onboarding when it is one."""
    return f"chaos-{index:05d}"


def plan_requests(requests: int, rng: random.Random, invalid_share: float, *, whole_stay: bool = True) -> list[Planned]:
    """The run's requests, in the order of their ids; the follow-ups name whose onboarding they follow.
    Without the `whole_stay`: onboardings only (and the invalid), every lease ending after the run."""
    offboard_share, update_share = (OFFBOARD_SHARE, UPDATE_SHARE) if whole_stay else (0.0, 0.0)
    actions: list[RequestAction | None] = []
    for _ in range(requests):
        draw = rng.random()
        if draw < invalid_share:
            actions.append(None)
        elif draw < invalid_share + offboard_share:
            actions.append(RequestAction.OFFBOARD)
        elif draw < invalid_share + offboard_share + update_share:
            actions.append(RequestAction.UPDATE)
        else:
            actions.append(RequestAction.ONBOARD)
    leases: dict[int, LeaseLength] = {}
    for index, action in enumerate(actions):
        if action is RequestAction.ONBOARD and rng.random() < LEASED_SHARE:
            leases[index] = "short" if whole_stay and rng.random() < SHORT_LEASE_SHARE else "long"
    onboarded = [index for index, action in enumerate(actions) if action is RequestAction.ONBOARD]
    untargeted = [index for index in onboarded if index not in leases]
    leased = list(leases)
    rng.shuffle(untargeted)
    rng.shuffle(leased)
    del leased[(len(leased) + 1) // 2 :]  # the other half's leases end untouched
    plan: list[Planned] = []
    for index, action in enumerate(actions):
        request_id = chaos_request_id(index)
        if action is None or action is RequestAction.ONBOARD:
            plan.append(Planned(request_id, action, index, leases.get(index)))
            continue
        wants_leased = action is RequestAction.OFFBOARD and rng.random() < LEASED_OFFBOARD_SHARE
        pool = leased if wants_leased and leased else untargeted or leased
        if not pool:  # nobody left to follow: an onboarding of its own
            plan.append(Planned(request_id, RequestAction.ONBOARD, index))
            continue
        person = pool.pop()
        plan.append(Planned(request_id, action, person, after=chaos_request_id(person)))
    return plan


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
    actions: Counter[str] = field(default_factory=Counter)  # sent, by action ("invalid" for the invalid)
    leased: set[str] = field(default_factory=set)  # onboardings sent with an end
    short_leased: set[str] = field(default_factory=set)  # of those, the ones ending during the kills
    leases_refused: int = 0  # an end already past when the onboarding was accepted (InvalidRequest)
    expired: int = 0  # leases whose end's offboard has an outcome
    leases_offboarded: int = 0  # offboards sent for someone with a lease: it ends early, or had ended
    superseded: set[str] = field(default_factory=set)  # onboardings whose lease an offboard ended first
    notices: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # by status
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    left: dict[str, int] = field(default_factory=dict)  # queue -> messages still there
    kills: int = 0
    emulator_restarts: int = 0
    seconds: float = 0.0  # until every request had its outcome: the sweep's part is not counted
    costs: Costs | None = None  # the same
    drift: DriftReport = field(default_factory=DriftReport)  # the sweep after the requests

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated and self.drift.ok

    @property
    def invalid_sent(self) -> int:
        return self.actions["invalid"]

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{status} {count}" for status, count in sorted(self.outcomes.items()))
        actions = ", ".join(f"{action} {count}" for action, count in sorted(self.actions.items()))
        left = ", ".join(f"{queue} {count}" for queue, count in self.left.items() if count) or "nothing"
        return [
            f"requests sent: {self.sent} ({actions})",
            f"leases: {len(self.leased)} ({len(self.short_leased)} ending during the kills), "
            f"{self.leases_refused} refused at intake (end already past), {self.expired} ended (their offboard's "
            f"outcome counted below); {self.leases_offboarded} of the people offboarded, {len(self.superseded)} "
            f"before their lease's end; notices: {self.notices}",
            f"outcomes: {sum(self.outcomes.values())} ({statuses})",
            f"lost (no outcome): {len(self.lost)}" + (f" e.g. {self.lost[:5]}" if self.lost else ""),
            f"duplicated: {len(self.duplicated)}" + (f" e.g. {self.duplicated[:5]}" if self.duplicated else ""),
            f"left in queues and dead-letter queues: {left}",
            f"host killed {self.kills} times, emulator restarted {self.emulator_restarts} times, "
            f"{self.seconds:.0f} s in all ({self.sent / self.seconds if self.seconds else 0:.1f} requests/s)",
            *(self.costs.lines(self.sent) if self.costs else []),
            *(self.drift.lines() if self.drift.period or self.drift.not_run else []),
        ]


class Broker:
    """The emulator; a restart stops it and starts another on the same port and database. Each one's CPU
    time is read before it stops, for the run's costs."""

    def __init__(self, emulator: ServiceBusEmulator, config: EmulatorConfig, database: Path) -> None:
        self.emulator = emulator
        self._config = config
        self._database = database
        self._stopped_cpu_seconds: list[float | None] = []

    async def restart(self) -> None:
        self._stopped_cpu_seconds.append(self.emulator.cpu_seconds())
        self.emulator.stop()
        await asyncio.sleep(0.5)
        self.emulator = ServiceBusEmulator(self._config, port=self.emulator.port, database=self._database)
        self.emulator.start()

    def cpu_seconds(self) -> float | None:
        """Every emulator's of the run so far (None when one could not be read)."""
        every = [*self._stopped_cpu_seconds, self.emulator.cpu_seconds()]
        known = [seconds for seconds in every if seconds is not None]
        return sum(known) if len(known) == len(every) else None


@dataclass(frozen=True)
class Run:
    """What the outcome collector needs to know of a chaos run: its requests, where the leases are kept,
    and the kills and restarts (outcomes are not all in before those are over)."""

    plan: list[Planned]
    requests: int
    rng: random.Random
    book: LeaseBook
    report: Report
    chaos: asyncio.Task[None]

    def follow_ups(self) -> dict[str, list[Planned]]:
        waiting: dict[str, list[Planned]] = {}
        for planned in self.plan:
            if planned.after is not None:
                waiting.setdefault(planned.after, []).append(planned)
        return waiting

    async def lease_ends(self, outcomes: list[OutcomeEvent]) -> set[str]:
        """The offboard request each lease that began sends at its end (one per leased onboarding that
        succeeded), unless an offboard of the person ended the lease before its end came: the lease book then
        says ended, and no outcome has the end's request id. Which leases an offboard ended goes to the report.

        Both are read anew each time: the lease book can say ended for a lease whose own end's offboard is
        about to publish its outcome (an onboarding that finished again after its end, on a redelivery, keeps
        its lease once more, and that offboard then ends it)."""
        people = {planned.request_id: planned.person for planned in self.plan}
        answered = {outcome.request_id for outcome in outcomes}
        ends: set[str] = set()
        superseded: set[str] = set()
        for outcome in outcomes:
            if outcome.request_id not in self.report.leased or outcome.status not in _DONE:
                continue
            if outcome.group is None or outcome.expires_at is None:
                continue
            key = lease_key(person_address(people[outcome.request_id]), outcome.group.id)
            end = expiry_request_id(key, outcome.expires_at)
            lease = None if end in answered else await self.book.lease(key)
            if lease is not None and lease.state is LeaseState.ENDED:
                superseded.add(outcome.request_id)
            else:
                ends.add(end)
        self.report.superseded = superseded
        return ends


async def run_chaos(
    *,
    requests: int,
    kills: int,
    emulator_restarts: int,
    seconds: float,
    seed: int,
    invalid_share: float = 0.05,
    sweep_kills: int = 3,
    sweep_emulator_restarts: int = 1,
    duplicate_window: timedelta | None = None,
) -> Report:
    """`duplicate_window`: the queues' duplicate-detection window instead of their 10 minutes; a short one
    shows a second outcome that a long run's backlog would send past the window (docs/reliability.md)."""
    rng = random.Random(seed)  # noqa: S311  # repeatable chaos, not cryptography
    plan = plan_requests(requests, rng, invalid_share)
    report = Report()
    _note_plan(report, plan)
    started, started_at, cpu = time.monotonic(), datetime.now(UTC), _cpu_seconds()
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "servicebus.db"
        config = EmulatorConfig.default().with_overrides(lock_duration=timedelta(seconds=5))
        if duplicate_window is not None:
            config = config.with_overrides(duplicate_detection_history_time_window=duplicate_window)
        knobs = Knobs.model_validate({**UNKIND_TENANT, "random_seed": seed})
        settings = {
            "ONBOARDING_LEASE_NOTICE_SECONDS": LEASE_NOTICE_SECONDS,
            "ONBOARDING_DRIFT_SCHEDULE": NO_SWEEP_SCHEDULE,
        }
        with local_stack(
            emulator_config=config, servicebus_database=database, sandbox_knobs=knobs, settings=settings
        ) as stack:
            broker = Broker(stack.emulator, config, database)
            host = HostProcess(stack.environment)
            book = SqliteJournal(stack.journal_database)
            chaos: asyncio.Task[None] | None = None
            await host.start()
            try:
                # Every request but the follow-ups, the short leases first: at the head of the queue, they
                # are accepted before their end.
                first = sorted((planned for planned in plan if planned.after is None), key=lambda p: p.lease != "short")
                await _send(stack, first, requests, rng)
                chaos_until = time.monotonic() + min(seconds / 2, 15 + requests * 0.05)
                moments = sorted(rng.uniform(1, chaos_until - time.monotonic()) for _ in range(kills))
                restart_at = {rng.randrange(len(moments) + 1) for _ in range(emulator_restarts)}
                chaos = asyncio.create_task(_misbehave(host, broker, moments, restart_at, _counted_in(report)))
                run = Run(plan, requests, rng, book, report, chaos)
                sent = {planned.request_id for planned in first}
                seen: set[int] = set()
                outcomes = await every_outcome(stack, sent, started + seconds, report, run, seen)
                await chaos
                await host.stop()
                report.seconds = time.monotonic() - started
                report.costs = await _costs(stack, database, started_at, cpu, broker.cpu_seconds())
                ids = [planned.request_id for planned in plan]
                count_outcomes(report, [*ids, *sorted(await run.lease_ends(outcomes))], outcomes, stack)
                if report.lost:  # requests still in flight would change the roster under the sweep
                    report.drift.not_run = "not run: some requests have no outcome"
                else:
                    sweep = Sweeping(stack, broker, report, outcomes, seen)
                    await sweep.run(rng, kills=sweep_kills, emulator_restarts=sweep_emulator_restarts)
                ends = await run.lease_ends(outcomes)
                count_outcomes(report, [*ids, *sorted(ends)], outcomes, stack)  # with what came during the sweep
                _count_leases(report, plan, outcomes)
                report.left = await _left_in_queues(broker.emulator.connection_string)
            finally:
                if chaos is not None and not chaos.done():
                    chaos.cancel()
                await host.stop()
                await book.close()
                if broker.emulator is not stack.emulator:
                    broker.emulator.stop()
    return report


def _note_plan(report: Report, plan: list[Planned]) -> None:
    """What is sent, by action, and which onboardings carry a lease."""
    report.sent += len(plan)
    report.actions += Counter(str(planned.action or "invalid") for planned in plan)
    report.leased |= {planned.request_id for planned in plan if planned.lease is not None}
    report.short_leased |= {planned.request_id for planned in plan if planned.lease == "short"}
    report.leases_offboarded += sum(
        1
        for planned in plan
        if planned.action is RequestAction.OFFBOARD and chaos_request_id(planned.person) in report.leased
    )


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
    emulator_cpu_seconds: float | None,
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
    return Costs(
        emulator_cpu_seconds=emulator_cpu_seconds,
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
    """`requests` onboardings on create-contact, a share of them invalid on purpose and about a tenth with a
    lease ending after the last is accepted; their ids."""
    plan = plan_requests(requests, rng, invalid_share, whole_stay=False)
    _note_plan(report, plan)
    await _send(stack, plan, requests, rng)
    return [planned.request_id for planned in plan]


async def _send(stack: LocalStack, planned: Iterable[Planned], requests: int, rng: random.Random) -> None:
    """The requests on create-contact, in batches of 50; sent again, a request id keeps it one request."""
    messages = [request.message(requests, rng) for request in planned]
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_sender(StageName.CREATE_CONTACT.value) as sender,
    ):
        for start in range(0, len(messages), 50):
            await sender.send_messages(messages[start : start + 50])


async def _misbehave(
    host: HostProcess,
    broker: Broker,
    moments: list[float],
    restart_at: set[int],
    tally: Callable[[Misdeed], Awaitable[None]],
) -> None:
    """Kill the host at each moment (seconds from now) and start it again; restart the broker in between.
    Each is tallied just before it is done."""
    origin = time.monotonic()
    for index, moment in enumerate([*moments, None]):
        if index in restart_at:
            await tally("restart")
            await broker.restart()
        if moment is None:
            break
        await asyncio.sleep(max(0.0, origin + moment - time.monotonic()))
        await tally("kill")
        await host.kill()
        await host.start()


def _counted_in(report: Report) -> Callable[[Misdeed], Awaitable[None]]:
    async def tally(misdeed: Misdeed) -> None:
        if misdeed == "kill":
            report.kills += 1
        else:
            report.emulator_restarts += 1

    return tally


async def every_outcome(
    stack: LocalStack,
    wanted: set[str],
    deadline: float,
    report: Report | None = None,
    run: Run | None = None,
    seen: set[int] | None = None,
) -> list[OutcomeEvent]:
    """Every outcome until each wanted request has one (then a little longer, to see duplicates). In a chaos
    `run`, not before its kills and restarts are over; each follow-up is sent when its person's onboarding
    has an outcome, and is wanted too, as is each lease's end (an offboard request of its own).

    Counted once per sequence number (`seen`: those read already): an outcome message delivered again
    because its completion was lost (a lock that ran out on this busy machine) is the same event, not a
    duplicate; a second outcome for a request is a second message, with its own sequence number.
    """
    wanted = set(wanted)
    waiting = run.follow_ups() if run is not None else {}
    due: list[Planned] = []
    outcomes: list[OutcomeEvent] = []
    seen = set() if seen is None else seen
    grace: float | None = None
    async with ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client:
        while time.monotonic() < (grace or deadline):
            try:
                if due and run is not None:  # sent again after a broker restart: its request id keeps it one
                    await _send(stack, due, run.requests, run.rng)
                    wanted.update(planned.request_id for planned in due)
                    due = []
                async with client.get_queue_receiver(OUTCOMES) as receiver:
                    batch = await receiver.receive_messages(max_message_count=100, max_wait_time=2)
                    for message in batch:
                        if (outcome := read_outcome_queue(message, seen, outcomes, report)) is not None:
                            due += waiting.pop(outcome.request_id, [])
                        await receiver.complete_message(message)
            except Exception:  # the broker restarting under us: try again
                await asyncio.sleep(1)
                continue
            if grace is None and not waiting and not due and (run is None or run.chaos.done()):
                ends = await run.lease_ends(outcomes) if run is not None else set()
                if wanted | ends <= {outcome.request_id for outcome in outcomes}:
                    grace = time.monotonic() + 5
    return outcomes


def read_outcome_queue(
    message: ServiceBusReceivedMessage, seen: set[int], outcomes: list[OutcomeEvent], report: Report | None
) -> OutcomeEvent | None:
    """One message of the outcome queue, read once per sequence number: an outcome (added to `outcomes` and
    returned), a lease's notice or a drift event (counted in the report), told apart by subject."""
    if (number := message.sequence_number or 0) in seen:
        return None
    seen.add(number)
    body = b"".join(message.body)
    if message.subject == NOTICE_SUBJECT:
        if report is not None:
            report.notices += 1
        return None
    if message.subject == DRIFT_SUBJECT:
        if report is not None:
            report.drift.note(drift_event(body))
        return None
    outcome = OutcomeEvent.model_validate_json(body)
    outcomes.append(outcome)
    return outcome


@dataclass
class Sweeping:
    """The run's drift sweep, after the requests (tools/chaos_drift.py): memberships broken in the sandbox, the
    timer fired by a host that is then killed while the sweep's pages and checks run, the broker restarted,
    and the outcome queue read meanwhile (an outcome arriving now is counted with the others)."""

    stack: LocalStack
    broker: Broker
    report: Report
    outcomes: list[OutcomeEvent]
    seen: set[int]

    async def run(self, rng: random.Random, *, kills: int, emulator_restarts: int) -> None:
        drift, started = self.report.drift, time.monotonic()
        journal = SqliteJournal(self.stack.journal_database)
        try:
            active = await active_memberships(journal)
            drift.active = len(active)
            deadline = started + SWEEP_GUARD_SECONDS + SWEEP_GUARD_SECONDS_PER_MEMBERSHIP * len(active)
            drift.broken = break_memberships(self.stack.sandbox.directory, active, rng)
            count_recorded_checks(self.stack.journal_database)
            host = HostProcess({**self.stack.environment, **sweep_settings(len(active))})
            await host.start()
            try:
                await self._watch(host, journal, rng, kills, emulator_restarts, deadline)
            finally:
                await host.stop()
            drift.seconds = time.monotonic() - started
            if (sweep := await journal.sweep(drift.period)) is not None:
                drift.pages, drift.fanned_out = sweep.pages, sweep.fanned_out
            checks = recorded_checks(self.stack.journal_database, drift.period)
            drift.count(await active_memberships(journal), checks)
        finally:
            await journal.close()

    async def _watch(
        self,
        host: HostProcess,
        journal: SqliteJournal,
        rng: random.Random,
        kills: int,
        emulator_restarts: int,
        deadline: float,
    ) -> None:
        """Until the sweep has checked everyone and its queue is empty (then a little longer, to see a second
        event). The kills and the restart come once the timer has started the sweep."""
        chaos: asyncio.Task[None] | None = None
        grace: float | None = None
        async with ServiceBusClient.from_connection_string(self.stack.environment[SERVICEBUS_CONNECTION]) as client:
            try:
                while time.monotonic() < (grace or deadline):
                    try:
                        await self._read_outcomes(client)
                        if chaos is None and (sweep := await journal.latest_sweep()) is not None:
                            chaos = self._misbehave_in(sweep, host, journal, rng, kills, emulator_restarts)
                        if grace is None and chaos is not None and chaos.done() and await self._swept(client, journal):
                            grace = time.monotonic() + 5
                    except Exception:  # the broker restarting under us: try again
                        await asyncio.sleep(1)
                if chaos is not None and chaos.done():
                    chaos.result()  # a kill or a restart that failed says so
            finally:
                if chaos is not None and not chaos.done():
                    chaos.cancel()

    def _misbehave_in(
        self,
        sweep: Sweep,
        host: HostProcess,
        journal: SqliteJournal,
        rng: random.Random,
        kills: int,
        emulator_restarts: int,
    ) -> asyncio.Task[None]:
        """The kills and restarts of the sweep, timed from its start, not from now: each kill comes before its
        scheduled pages can reach the last person."""
        drift = self.report.drift
        drift.period = sweep.period
        since = (datetime.now(UTC) - sweep.started_at).total_seconds()
        window = max(2.0, 0.8 * least_fan_out_seconds(drift.active))
        moments = sorted(rng.uniform(0.5, window) - since for _ in range(kills))
        restart_at = {rng.randrange(len(moments) + 1) for _ in range(emulator_restarts)}

        async def tally(misdeed: Misdeed) -> None:
            if misdeed == "restart":
                drift.emulator_restarts += 1
                return
            drift.kills += 1
            counts = await journal.counts(drift.period)
            drift.kills_mid_sweep += counts.checked < counts.active

        return asyncio.create_task(_misbehave(host, self.broker, moments, restart_at, tally))

    async def _read_outcomes(self, client: ServiceBusClient) -> None:
        async with client.get_queue_receiver(OUTCOMES) as receiver:
            for message in await receiver.receive_messages(max_message_count=100, max_wait_time=1):
                read_outcome_queue(message, self.seen, self.outcomes, self.report)
                await receiver.complete_message(message)

    async def _swept(self, client: ServiceBusClient, journal: SqliteJournal) -> bool:
        """The fan-out done, every active membership checked in the period, and nothing left on `drift`."""
        counts = await journal.counts(self.report.drift.period)
        if counts.sweep is None or counts.sweep.fanned_out_at is None or counts.checked < counts.active:
            return False
        async with client.get_queue_receiver(DRIFT_QUEUE) as receiver:
            async for _ in peeked(receiver):
                return False
        return True


def count_outcomes(report: Report, ids: list[str], outcomes: list[OutcomeEvent], stack: LocalStack) -> None:
    """Outcomes of `ids` by status, and what was lost or duplicated: in the outcomes and in the sandbox's
    directory. Only `ids`' outcomes are counted: a lease that ends while the caller still listens sends an
    offboard of its own, whose outcome is no answer to what was sent."""
    per_request = Counter(o.request_id for o in outcomes)
    report.expired = sum(1 for request_id in ids if request_id.startswith("lease-") and per_request[request_id])
    wanted = set(ids)
    report.outcomes = Counter(str(o.status) for o in outcomes if o.request_id in wanted)
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


def _count_leases(report: Report, plan: list[Planned], outcomes: list[OutcomeEvent]) -> None:
    """Leases refused at intake, and a lease ended early with no offboard of its person (a lost end)."""
    report.leases_refused = sum(
        1
        for o in outcomes
        if o.request_id in report.leased
        and o.status is OutcomeStatus.FAILED
        and o.reason is DeadLetterReason.INVALID_REQUEST
    )
    offboarded = {planned.person for planned in plan if planned.action is RequestAction.OFFBOARD}
    people = {planned.request_id: planned.person for planned in plan}
    report.lost += [
        f"lease of {request_id} ended with no offboard"
        for request_id in sorted(report.superseded)
        if people[request_id] not in offboarded
    ]


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
    sweep_kills: Annotated[int, typer.Option(help="Host kills during the drift sweep after the requests.")] = 3,
    sweep_emulator_restarts: Annotated[int, typer.Option(help="Emulator restarts during the drift sweep.")] = 1,
    duplicate_window_seconds: Annotated[
        float | None,
        typer.Option(help="The queues' duplicate-detection window (default: their 600 s); short shows late repeats."),
    ] = None,
) -> None:
    """Onboard, offboard and update many people through chaos, then sweep them for drift through more, and check
    that none is lost, duplicated, skipped or reported twice."""
    report = asyncio.run(
        run_chaos(
            requests=requests,
            kills=kills,
            emulator_restarts=emulator_restarts,
            seconds=seconds,
            seed=seed,
            sweep_kills=sweep_kills,
            sweep_emulator_restarts=sweep_emulator_restarts,
            duplicate_window=None if duplicate_window_seconds is None else timedelta(seconds=duplicate_window_seconds),
        )
    )
    console = Console()
    for line in report.lines():
        console.print(line, highlight=False)
    raise typer.Exit(0 if report.ok else 1)


if __name__ == "__main__":
    typer.run(main)

"""The drift watch's sweep over many active onboardings, beside people who share no group (issue 27).

.venv/bin/python -m benchmarks.drift [--people 10000] [--baseline 500] [--latency-ms 50] [--throttle 20] [--quick]

The tenant and the roster are seeded directly (10,000 onboardings through the pipeline would take an
hour): mail contacts stamped as the app's (CustomAttribute15) in distribution and mail-enabled security
groups, guests as members and subscribers of Microsoft 365 groups, and one roster entry each, as
verify-delivery writes it. Most people are in three large groups, the rest in many small ones; one in a
hundred is broken in the sandbox (removed, hidden, unstamped, deleted, blocked, unsubscribed), as an
administrator would after the onboarding. Then one sweep runs through the local host (function_app.py's
timer, queue `drift` on the emulator, the real checks against the sandbox) until the roster says every
active membership was checked in the period.

The baseline is measured in the same run: the same checks when no one shares a group (each person alone
in a group, a smaller population). Every per-person figure is printed beside it, as a ratio. Nothing is
asserted; docs/performance.md ("Drift watch") has the figures and what they mean.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from benchmarks.pipeline import OUTCOMES, StandIns
from functions.triggers import DRIFT_SWEEP_FUNCTION
from shared.contracts import GroupKind, Recipient, RecipientKind, ResolvedGroup
from shared.drift.events import DRIFT_SUBJECT
from shared.drift.model import Membership, membership_key, period_id
from shared.drift.sweep import DriftPage, check_runs, period_start, work_message
from shared.journal import SqliteJournal
from shared.outbox import peeked
from shared.provenance import CONTACT_ATTRIBUTE, stamp
from shared.queues import DRIFT_QUEUE
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import running_host
from standins.tenant_sandbox import Knobs, TenantSeed
from standins.tenant_sandbox.knobs import FACES, Throttle
from standins.tenant_sandbox.model import SeedContact, SeedGroup, SeedUser

NAMESPACE = uuid.UUID("6f0b1d2e-27be-4c5a-9d8e-000000000027")  # the benchmark's own ids, the same every run
# Most people in a few large groups (share of the population per kind), the rest in many small ones.
LARGE = ((GroupKind.DISTRIBUTION, 0.40), (GroupKind.MICROSOFT_365, 0.25), (GroupKind.MAIL_ENABLED_SECURITY, 0.10))
SMALL_SIZES = (2, 5, 10, 23)  # in turn: ten people a small group on average
SMALL_KINDS = (GroupKind.DISTRIBUTION, GroupKind.MICROSOFT_365)
BROKEN_EVERY = 100  # one person in a hundred is broken
FIRST_BROKEN = 7  # so that a population of ten already has one
CONTACT_BREAKS = ("removed", "hidden", "unstamped", "deleted")
GUEST_BREAKS = ("removed", "disabled", "unsubscribed", "deleted")
# The fan-out as fast as the settings allow, so that the pacing does not bind (the directory or the host does).
SETTINGS = {"ONBOARDING_DRIFT_PER_MINUTE": "100000", "ONBOARDING_DRIFT_PAGE_SIZE": "500"}
PERIOD = timedelta(days=1)  # ONBOARDING_DRIFT_PERIOD's default
POLL_SECONDS = 2.0  # how often the benchmark reads the roster's counts while the sweep runs
IDLE_SECONDS = 5.0  # the host's own CPU while it waits for messages, measured before the sweep


def _id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(map(str, parts))))


@dataclass(frozen=True)
class Person:
    number: int
    group: int  # the index of their group
    kind: GroupKind
    broken: str | None  # how the sandbox was changed after their onboarding, if at all

    @property
    def contact(self) -> bool:
        return self.kind is not GroupKind.MICROSOFT_365

    @property
    def address(self) -> str:
        return f"person.{self.number}@fabrikam.example" if self.contact else f"guest.{self.number}@tailspin.example"


@dataclass(frozen=True)
class Population:
    label: str
    people: tuple[Person, ...]
    groups: tuple[GroupKind, ...]  # each group's kind, by index

    @property
    def broken(self) -> int:
        return sum(1 for person in self.people if person.broken)


def _people(kinds_and_groups: Sequence[tuple[GroupKind, int]], broken_every: int) -> tuple[Person, ...]:
    """One person in `broken_every` broken, each kind of change in turn for their kind of recipient."""
    contact_breaks, guest_breaks = itertools.cycle(CONTACT_BREAKS), itertools.cycle(GUEST_BREAKS)
    people = []
    for number, (kind, group) in enumerate(kinds_and_groups):
        breaks = guest_breaks if kind is GroupKind.MICROSOFT_365 else contact_breaks
        broken = number % broken_every == FIRST_BROKEN % broken_every
        people.append(Person(number, group, kind, next(breaks) if broken else None))
    return tuple(people)


def sharing(people: int, broken_every: int = BROKEN_EVERY) -> Population:
    """`people` in LARGE's three large groups and, the rest, in small groups of SMALL_SIZES in turn."""
    kinds: list[GroupKind] = []
    placed: list[tuple[GroupKind, int]] = []
    for kind, share in LARGE:
        size = int(people * share)
        placed += [(kind, len(kinds))] * size
        kinds.append(kind)
    sizes, small_kinds = itertools.cycle(SMALL_SIZES), itertools.cycle(SMALL_KINDS)
    while len(placed) < people:
        kind, size = next(small_kinds), min(next(sizes), people - len(placed))
        placed += [(kind, len(kinds))] * size
        kinds.append(kind)
    return Population(f"{people:,} people in {len(kinds):,} groups", _people(placed, broken_every), tuple(kinds))


def alone(people: int, like: Population, broken_every: int = BROKEN_EVERY) -> Population:
    """The baseline: `people`, each alone in a group, with the kinds in `like`'s shares."""
    kinds = tuple(like.people[number * len(like.people) // people].kind for number in range(people))
    placed = [(kind, index) for index, kind in enumerate(kinds)]
    return Population(f"{people:,} people each alone in a group", _people(placed, broken_every), kinds)


def _group(population: Population, index: int) -> ResolvedGroup:
    return ResolvedGroup(
        id=_id("group", index),
        display_name=f"Drift bench {index}",
        mail=f"drift-bench-{index}@contoso.com",
        kind=population.groups[index],
    )


def seeded(population: Population) -> tuple[TenantSeed, list[Membership]]:
    """The demo tenant after the population's onboardings (and the breaks since), and their roster entries."""
    contacts: list[SeedContact] = []
    guests: list[SeedUser] = []
    members: dict[int, list[str]] = {index: [] for index in range(len(population.groups))}
    subscribers: dict[int, list[str]] = {index: [] for index in range(len(population.groups))}
    roster: list[Membership] = []
    at = datetime.now(UTC) - timedelta(days=2)  # onboarded before the period the sweep checks
    for person in population.people:
        group, request_id = _group(population, person.group), f"bench-drift-{person.number}"
        name = f"Person {person.number}"
        if person.contact:
            entra_id = _id("contact", person.number)
            recipient = Recipient(
                kind=RecipientKind.MAIL_CONTACT,
                id=_id("contact-guid", person.number),
                created=True,
                directory_object_id=entra_id,
            )
            if person.broken != "deleted":
                provenance = "cost centre 4711" if person.broken == "unstamped" else stamp(request_id)
                contacts.append(
                    SeedContact(
                        guid=recipient.id,
                        external_directory_object_id=entra_id,
                        name=name,
                        external_email_address=person.address,
                        first_name="Person",
                        last_name=str(person.number),
                        custom_attributes={CONTACT_ATTRIBUTE: provenance},
                        hidden_from_address_lists=person.broken == "hidden",
                    )
                )
            if person.broken not in {"removed", "deleted"}:
                members[person.group].append(entra_id)
        else:
            user_id = _id("guest", person.number)
            recipient = Recipient(kind=RecipientKind.GUEST_USER, id=user_id, created=True, directory_object_id=user_id)
            if person.broken != "deleted":
                guests.append(
                    SeedUser(
                        id=user_id,
                        display_name=name,
                        mail=person.address,
                        user_type="Guest",
                        account_enabled=person.broken != "disabled",
                    )
                )
            if person.broken not in {"removed", "deleted"}:
                members[person.group].append(user_id)
                if person.broken != "unsubscribed":
                    subscribers[person.group].append(user_id)  # a guest is subscribed when added
        roster.append(
            Membership(
                key=membership_key(person.address, group.id),
                external_email=person.address,
                display_name=name,
                group=group,
                recipient=recipient,
                allow_external_senders=True,
                source_system="demo-hr",
                request_id=request_id,
                correlation_id=request_id,
                verified_at=at,
                last_seen_right_at=at,
                updated_at=at,
            )
        )
    groups = tuple(
        SeedGroup(
            id=resolved.id,
            display_name=resolved.display_name,
            mail=resolved.mail,
            kind=resolved.kind,
            require_sender_authentication=False,  # as the onboardings left them (the 5.7.133 fix)
            members=tuple(members[index]),
            subscribers=tuple(subscribers[index]),
        )
        for index, resolved in ((index, _group(population, index)) for index in range(len(population.groups)))
    )
    demo = TenantSeed.demo()
    seed = demo.model_copy(
        update={"users": demo.users + tuple(guests), "contacts": tuple(contacts), "groups": demo.groups + groups}
    )
    return seed, roster


def tenant(latency_ms: float, rate: float) -> Knobs:
    """The sandbox of the pipeline benchmark's goodput row: `rate` calls/s per face, a second's worth saved up."""
    bucket = Throttle(requests_per_second=rate, burst=max(1, int(rate)))
    return Knobs(latency_ms=latency_ms, throttle=dict.fromkeys(FACES, bucket))


@dataclass
class SweepRun:
    population: Population
    check_messages: int
    seconds: float
    cpu_seconds: float  # this process: the host's event loop and its threads, and the roster poll
    checked: int
    active: int
    events: int
    dead_lettered: int
    idle_cpu_per_second: float  # the host waiting for messages (its receivers), before the sweep
    calls: Counter[str] = field(default_factory=Counter)  # "face operation" -> answered calls
    throttled: int = 0  # 429s

    @property
    def people(self) -> int:
        return len(self.population.people)

    def per_person(self, face: str | None = None) -> float:
        answered = sum(n for op, n in self.calls.items() if face is None or op.startswith(face + " "))
        return answered / max(1, self.checked)

    def ceiling_seconds(self, knobs: Knobs) -> float:
        """The least time this run's answered calls take at the throttle's rate, after the saved-up burst."""
        least = [
            max(0, sum(n for op, n in self.calls.items() if op.startswith(face + " ")) - bucket.burst)
            / bucket.requests_per_second
            for face, bucket in knobs.throttle.items()
        ]
        return max(least, default=0.0)


async def run_sweep(population: Population, knobs: Knobs, *, within_seconds: float) -> SweepRun:
    """One sweep of `population` through the local host, on stand-ins in a process of their own (their CPU
    is not the host's), timed from the timer on a host that has handled a drift message already."""
    seed, roster = seeded(population)
    with StandIns(knobs, seed, SETTINGS) as stand_ins:
        environment = stand_ins.environment
        journal = SqliteJournal(environment["ONBOARDING_JOURNAL"].removeprefix("sqlite:"))
        try:
            for membership in roster:
                await journal.keep_membership(membership)
            async with (
                ServiceBusClient.from_connection_string(environment[SERVICEBUS_CONNECTION]) as client,
                running_host(environment) as host,
            ):
                await _warm_up(client)
                idle = time.process_time()
                await asyncio.sleep(IDLE_SECONDS)
                idle_per_second = (time.process_time() - idle) / IDLE_SECONDS
                stand_ins.clear_log()  # and the tenant's buckets full again
                period = period_id(period_start(datetime.now(UTC), PERIOD))
                started, cpu = time.perf_counter(), time.process_time()
                await host.run_timer(DRIFT_SWEEP_FUNCTION)
                counts = await journal.counts(period)
                while counts.checked < counts.active and time.perf_counter() - started < within_seconds:
                    await asyncio.sleep(POLL_SECONDS)
                    counts = await journal.counts(period)
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
                events = await _drift_events(client)
                dead = await _dead_letters(client)
        finally:
            await journal.close()
        log = stand_ins.request_log()
    return SweepRun(
        population,
        len(check_runs(period, sorted(roster, key=lambda m: m.key))),
        seconds,
        cpu,
        counts.checked,
        counts.active,
        events,
        dead,
        idle_per_second,
        Counter(f"{e.face} {e.operation}" for e in log if e.status != 429),
        sum(1 for e in log if e.status == 429),
    )


async def _warm_up(client: ServiceBusClient) -> None:
    """A page of yesterday's period: the host loads the app's services for it and does nothing else."""
    yesterday = period_id(period_start(datetime.now(UTC) - PERIOD, PERIOD))
    async with client.get_queue_sender(DRIFT_QUEUE) as sender:
        await sender.send_messages(work_message(DriftPage(kind="page", period=yesterday)))
    for _ in range(600):  # a guard against hanging: the page is handled in well under a second
        if await _drained(client):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the warm-up drift message was not handled within five minutes")


async def _drained(client: ServiceBusClient) -> bool:
    async with client.get_queue_receiver(DRIFT_QUEUE) as receiver:
        async for _ in peeked(receiver):
            return False
    return True


async def _drift_events(client: ServiceBusClient) -> int:
    """Drift events on the outcome queue (where they go without a ReplyTo), each MessageId once."""
    ids: set[str] = set()
    async with client.get_queue_receiver(OUTCOMES) as receiver:
        while batch := await receiver.receive_messages(max_message_count=100, max_wait_time=3):
            for message in batch:
                if message.subject == DRIFT_SUBJECT:
                    ids.add(str(message.message_id))
                await receiver.complete_message(message)
    return len(ids)


async def _dead_letters(client: ServiceBusClient) -> int:
    async with client.get_queue_receiver(DRIFT_QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as receiver:
        return sum([1 async for _ in peeked(receiver)])


# --- the report ------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def report(run: SweepRun, baseline: SweepRun, knobs: Knobs) -> list[str]:
    ceiling = run.ceiling_seconds(knobs)
    groups = len(run.population.groups)
    faces = ", ".join(
        f"{face} {run.per_person(face):.3f} ({_ratio(run.per_person(face), baseline.per_person(face))})"
        for face in FACES
    )
    cpu, base_cpu = run.cpu_seconds / max(1, run.checked), baseline.cpu_seconds / max(1, baseline.checked)
    return [
        f"  {run.population.label}: {run.checked:,} of {run.active:,} active memberships checked in the period; "
        f"{run.check_messages:,} check messages ({run.checked / max(1, run.check_messages):.1f} people each, "
        f"{groups:,} groups)",
        f"    calls per person checked: {run.per_person():.3f} = {_ratio(run.per_person(), baseline.per_person())} "
        f"the baseline's {baseline.per_person():.3f}; by face: {faces}",
        "      " + ", ".join(f"{op} {n / max(1, run.checked):.3f}" for op, n in run.calls.most_common()),
        f"    sweep {run.seconds:.0f} s = {_ratio(run.seconds, ceiling)} the throttle's ceiling {ceiling:.0f} s "
        f"(the least time its {sum(run.calls.values()):,} answered calls take at "
        f"{', '.join(f'{b.requests_per_second:g}/s {face}' for face, b in knobs.throttle.items())}); "
        f"{run.checked / run.seconds:.0f} people/s; 429s {run.throttled}",
        f"    host CPU per person checked: {1000 * cpu:.2f} ms = {_ratio(cpu, base_cpu)} the baseline's "
        f"{1000 * base_cpu:.2f} ms ({run.cpu_seconds:.1f} s in all; the host idle used "
        f"{100 * run.idle_cpu_per_second:.1f} % of a core, not subtracted)",
        f"    drift events published: {run.events:,} for {run.population.broken:,} people broken; "
        f"drift dead letters: {run.dead_lettered}",
    ]


async def benchmark(
    people: int, baseline_people: int, knobs: Knobs, *, broken_every: int = BROKEN_EVERY, within_seconds: float = 1800
) -> list[SweepRun]:
    """The baseline, then the population that shares groups: the two runs the report compares."""
    shared = sharing(people, broken_every)
    runs = []
    for population in (alone(baseline_people, shared, broken_every), shared):
        runs.append(await run_sweep(population, knobs, within_seconds=within_seconds))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=10_000, help="active onboardings in the sweep")
    parser.add_argument("--baseline", type=int, default=500, help="people, each alone in a group, for the baseline")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--throttle", type=float, default=20, help="calls/s per face (the pipeline benchmark's)")
    parser.add_argument("--quick", action="store_true", help="500 people and a baseline of 50: about a minute")
    arguments = parser.parse_args()
    people, baseline_people = (500, 50) if arguments.quick else (arguments.people, arguments.baseline)
    knobs = tenant(arguments.latency_ms, arguments.throttle)
    print(
        f"Drift sweep: sandbox latency {arguments.latency_ms:g} ms a call, {arguments.throttle:g} calls/s per face "
        f"({max(1, int(arguments.throttle))} saved up); fan-out {SETTINGS['ONBOARDING_DRIFT_PER_MINUTE']} people a "
        f"minute, pages of {SETTINGS['ONBOARDING_DRIFT_PAGE_SIZE']} (ratios to the baseline; see docs/performance.md)"
    )
    started = time.perf_counter()
    baseline, shared = asyncio.run(benchmark(people, baseline_people, knobs))
    print("\n".join(report(shared, baseline, knobs)))
    print("  baseline, " + "\n".join(report(baseline, baseline, knobs)).lstrip())
    print(f"  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

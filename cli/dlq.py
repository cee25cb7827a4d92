"""`onboard dlq`: see, replay and purge what the stage queues dead-lettered.

The app's other queues carry no request (drift work, lease wake-ups, self-check requests): `dlq list`
counts their dead letters and says what one means, since each has its own way back (OTHER_QUEUES);
replaying one here would not be a request's new run.

Dead letters stay active: the dead-letter sweep only peeks (shared/dead_letters.py). Those an
earlier version's dead-letter functions deferred are still taken: peeking shows deferred and active
ones alike; a deferred one can only be taken by its sequence number, an active one by receiving it.

A replay is a new run of the request, not a copy of the message: the same body (request id, what
earlier stages gathered), the next replay number, and a fresh attempt budget, so its MessageIds and
its outcome are its own and duplicate detection cannot swallow them (shared/envelope.replay_message).
The stages are idempotent by request id, so a replay never creates a second contact or membership.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import typer
from azure.servicebus import ServiceBusMessageState, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import ServiceBusError
from pydantic_core import from_json
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.plumbing import console, errors, fail, settings_for, with_servicebus
from cli.tables import copyable_column
from cli.upstream import peek_count
from shared import envelope
from shared.contracts import StageName
from shared.envelope import Delivery
from shared.logs import mask_emails
from shared.outbox import PEEK_BATCH, peeked
from shared.progress import group_addresses
from shared.queues import DRIFT_QUEUE, LEASE_QUEUE, SELF_CHECK_QUEUE
from shared.reasons import REASONS
from shared.settings import ServiceBusSettings

RECEIVE_WAIT_SECONDS = 2.0
# What a replay cannot fix (an invalid body stays invalid): the reasons table says which.
NOT_REPLAYABLE = frozenset(reason.value for reason, facts in REASONS.items() if not facts.replayable)
# What a dead letter on each of the app's other queues means, and how its work comes back.
OTHER_QUEUES: dict[str, str] = {
    DRIFT_QUEUE: "drift work that failed every delivery: its people are checked again next period (docs/drift.md)",
    LEASE_QUEUE: "lease wake-ups: a lease still active 15 minutes past its end is woken again by the "
    "5-minute sweep (docs/leases.md); `onboard leases` shows it OVERDUE until then",
    SELF_CHECK_QUEUE: "self-check requests of `onboard doctor`: nothing waits on them; run it again",
}
OTHER_QUEUES_CAP = 100  # counted by peeking, as `onboard status` counts (its note says why)


@dataclass(frozen=True)
class DeadLetterView:
    """One dead letter as an operator sees it; addresses masked."""

    queue: StageName
    sequence_number: int
    request_id: str
    reason: str
    description: str
    attempts: int
    enqueued_at: datetime
    deferred: bool

    def age(self, now: datetime) -> timedelta:
        return now - self.enqueued_at


@dataclass(frozen=True)
class Selection:
    """Which dead letters a replay or purge takes: by sequence number, by reason, by age, or all."""

    sequence_numbers: frozenset[int] = frozenset()
    reason: str | None = None
    older_than: timedelta | None = None
    everything: bool = False

    def is_empty(self) -> bool:
        return not (self.sequence_numbers or self.reason or self.older_than or self.everything)

    def matches(self, view: DeadLetterView, now: datetime) -> bool:
        if self.sequence_numbers and view.sequence_number not in self.sequence_numbers:
            return False
        if self.reason is not None and view.reason.lower() != self.reason.lower():
            return False
        return self.older_than is None or view.age(now) >= self.older_than


@dataclass(frozen=True)
class Done:
    """What happened to one selected dead letter."""

    view: DeadLetterView
    result: str  # "replayed as <MessageId>", "purged", or why nothing was done
    ok: bool


MAX_AGE = timedelta(days=3650)  # far beyond any queue's or journal's history; larger ones overflow dates


def parse_age(text: str) -> timedelta:
    """`30m`, `2h`, `7d` (or seconds: `90s`), at most ten years."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.isdigit():
        raise ValueError(f"{text!r} is not an age like 90s, 30m, 2h or 7d")
    if int(number) * units[unit] > MAX_AGE.total_seconds():
        raise ValueError(f"{text!r} is longer than {MAX_AGE.days} days")
    return timedelta(seconds=int(number) * units[unit])


def _decoded(queue: StageName, message: ServiceBusReceivedMessage, now: datetime) -> tuple[bytes, Delivery]:
    """The body and envelope exactly as the stage would read them (raises envelope.UnreadableMessage)."""
    inbound = envelope.decode_from(queue, message, now)
    return inbound.body, inbound.delivery


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def masking_for(queue: StageName, message: ServiceBusReceivedMessage) -> Callable[[str], str]:
    """Mask as the logs do: every address but the tenant's group addresses the message names (read
    leniently: an unreadable dead letter names none, so everything in it is masked)."""
    try:
        shown = group_addresses(envelope.decode_from(queue, message, datetime.now(UTC)).payload)
    except envelope.UnreadableMessage:
        shown = frozenset()
    return lambda text: mask_emails(text, shown=shown)


def view_of(queue: StageName, message: ServiceBusReceivedMessage) -> DeadLetterView:
    """What the message says about itself, read leniently: a dead letter may be unreadable."""
    properties = {_text(k): v for k, v in (message.application_properties or {}).items()}
    request_id = envelope.claimed_request_id(message)
    attempt = _text(properties.get(envelope.ATTEMPT))
    mask = masking_for(queue, message)
    return DeadLetterView(
        queue=queue,
        sequence_number=message.sequence_number or 0,
        request_id=mask(request_id),
        reason=message.dead_letter_reason or "",
        description=mask(message.dead_letter_error_description or ""),
        attempts=max(int(attempt) if attempt.isdigit() else 1, message.delivery_count or 0),
        enqueued_at=message.enqueued_time_utc or datetime.now(UTC),
        deferred=message.state is ServiceBusMessageState.DEFERRED,
    )


async def count_other_dead_letters(client: ServiceBusClient) -> dict[str, int | str]:
    """Dead letters on each of OTHER_QUEUES (up to the cap), or why a queue could not be read."""

    async def count(queue: str) -> int | str:
        try:
            return await peek_count(client, queue, cap=OTHER_QUEUES_CAP, dead_letters=True)
        except ServiceBusError as error:  # no such queue, or no Data Receiver right on it
            return f"not read ({type(error).__name__})"

    counts = await asyncio.gather(*(count(queue) for queue in OTHER_QUEUES))
    return dict(zip(OTHER_QUEUES, counts, strict=True))


def render_other_queues(counts: dict[str, int | str]) -> RenderableType | None:
    """A line for each other queue with dead letters (or unread), saying what they are; None if none."""
    lines: list[RenderableType] = []
    for queue, counted in counts.items():
        if counted == 0:
            continue
        shown = f"≥{OTHER_QUEUES_CAP}" if isinstance(counted, int) and counted >= OTHER_QUEUES_CAP else str(counted)
        lines.append(Text.assemble((f"{queue}/$deadletterqueue: {shown}", "bold"), f": {OTHER_QUEUES[queue]}"))
    if not lines:
        return None
    return Group(Text("Other queues (no request on them; not replayed by this command):"), *lines)


@asynccontextmanager
async def _dead_letter_receiver(client: ServiceBusClient, queue: StageName) -> AsyncIterator[ServiceBusReceiver]:
    async with client.get_queue_receiver(queue.value, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as receiver:
        yield receiver


async def list_dead_letters(client: ServiceBusClient, queues: Iterable[StageName]) -> list[DeadLetterView]:
    async def peek(queue: StageName) -> list[DeadLetterView]:
        async with _dead_letter_receiver(client, queue) as receiver:
            return [view_of(queue, message) async for message in peeked(receiver)]

    per_queue = await asyncio.gather(*(peek(queue) for queue in queues))  # each link takes a round trip or two
    return [view for views in per_queue for view in views]


async def peek_one(
    client: ServiceBusClient, queue: StageName, sequence_number: int
) -> ServiceBusReceivedMessage | None:
    async with _dead_letter_receiver(client, queue) as receiver:
        batch = await receiver.peek_messages(max_message_count=1, sequence_number=sequence_number)
    return batch[0] if batch and batch[0].sequence_number == sequence_number else None


async def _locked(
    receiver: ServiceBusReceiver, views: Sequence[DeadLetterView]
) -> AsyncIterator[ServiceBusReceivedMessage]:
    """The selected dead letters, locked: deferred ones by sequence number, active ones by receiving
    (holding the others' locks until the end, so none comes round twice, then giving them back)."""
    deferred = sorted(v.sequence_number for v in views if v.deferred)
    if deferred:
        for message in await receiver.receive_deferred_messages(deferred):
            yield message
    active = {v.sequence_number for v in views if not v.deferred}
    held: list[ServiceBusReceivedMessage] = []
    try:
        while active:
            batch = await receiver.receive_messages(max_message_count=PEEK_BATCH, max_wait_time=RECEIVE_WAIT_SECONDS)
            if not batch:
                break  # the rest went meanwhile (another operator, a purge)
            for message in batch:
                if message.sequence_number in active:
                    active.discard(message.sequence_number)
                    yield message
                else:
                    held.append(message)
    finally:
        for message in held:
            await receiver.abandon_message(message)


async def replay(
    client: ServiceBusClient, queue: StageName, views: Sequence[DeadLetterView], now: datetime
) -> list[Done]:
    """Send each selected dead letter again as a new run of its request, then remove it from the
    dead-letter queue: send first, settle second, so a failure in between leaves it to replay again."""
    by_number = {v.sequence_number: v for v in views}
    done: list[Done] = []
    async with _dead_letter_receiver(client, queue) as receiver, client.get_queue_sender(queue.value) as sender:
        async for message in _locked(receiver, views):
            view = by_number[message.sequence_number or 0]
            if view.reason in NOT_REPLAYABLE:
                await receiver.abandon_message(message)
                done.append(
                    Done(view, f"not replayed: {view.reason} stays invalid; upstream must send it corrected", False)
                )
                continue
            try:
                again = envelope.replay_message(queue, *_decoded(queue, message, now), now)
            except (envelope.UnreadableMessage, envelope.EnvelopeError) as error:
                await receiver.abandon_message(message)
                done.append(Done(view, f"not replayed: {mask_emails(str(error))}", False))
                continue
            await sender.send_messages(again)
            await receiver.complete_message(message)
            done.append(Done(view, f"replayed as {again.message_id}", True))
    return done + _gone(views, done)


async def purge(client: ServiceBusClient, queue: StageName, views: Sequence[DeadLetterView]) -> list[Done]:
    done: list[Done] = []
    by_number = {v.sequence_number: v for v in views}
    async with _dead_letter_receiver(client, queue) as receiver:
        async for message in _locked(receiver, views):
            await receiver.complete_message(message)
            done.append(Done(by_number[message.sequence_number or 0], "purged", True))
    return done + _gone(views, done)


def confirm_question(act: str, count: int) -> str:
    """What replay or purge asks before acting: "Purge this dead letter?", "Purge these 3 dead letters?"."""
    chosen = "this dead letter" if count == 1 else f"these {count} dead letters"
    return f"{act.capitalize()} {chosen}?"


def _gone(views: Sequence[DeadLetterView], done: Sequence[Done]) -> list[Done]:
    handled = {d.view.sequence_number for d in done}
    return [
        Done(v, "gone: no longer in the dead-letter queue", False) for v in views if v.sequence_number not in handled
    ]


def _age_text(age: timedelta) -> str:
    seconds = max(int(age.total_seconds()), 0)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_list(views: Sequence[DeadLetterView], now: datetime) -> RenderableType:
    """Per queue, a table of what an operator copies (sequence number, request id, reason) whole, then each
    description below it, wrapped: 80 columns hold a bulk request id and the longest reason side by side."""
    if not views:
        return Text("No dead letters.")
    parts: list[RenderableType] = []
    for queue in dict.fromkeys(view.queue for view in views):
        of_queue = [view for view in views if view.queue is queue]
        parts.append(Text(f"{queue.value}/$deadletterqueue: {len(of_queue)}", style="bold"))
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("Seq", justify="right", no_wrap=True)
        copyable_column(table, "Request", (view.request_id for view in of_queue))
        copyable_column(table, "Reason", (view.reason for view in of_queue))
        table.add_column("Try", justify="right", no_wrap=True)
        table.add_column("Age", justify="right", no_wrap=True)
        for view in of_queue:
            seq = str(view.sequence_number) + ("*" if view.deferred else "")
            table.add_row(seq, Text(view.request_id), Text(view.reason), str(view.attempts), _age_text(view.age(now)))
        parts.append(table)
        for view in of_queue:
            description = view.description if len(view.description) <= 240 else view.description[:237] + "..."
            parts.append(Text.assemble(("  ", ""), (str(view.sequence_number), "bold"), ": ", description))
    if any(v.deferred for v in views):
        parts.append(Text("* deferred by an earlier version: replay takes it by sequence number", style="dim"))
    return Group(*parts)


def render_one(queue: StageName, message: ServiceBusReceivedMessage, now: datetime) -> RenderableType:
    view = view_of(queue, message)
    mask = masking_for(queue, message)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    rows = [
        ("Queue", f"{queue.value}/$deadletterqueue"),
        ("Sequence", str(view.sequence_number)),
        ("Request", view.request_id),
        ("MessageId", mask(envelope.message_id_of(message))),
        ("Reason", view.reason),
        ("Description", view.description),
        ("Attempts", str(view.attempts)),
        ("Age", _age_text(view.age(now))),
        ("State", "deferred (by an earlier version)" if view.deferred else "active"),
    ]
    for name, value in sorted((_text(k), _text(v)) for k, v in (message.application_properties or {}).items()):
        rows.append((f"  {name}", mask(value)))
    for label, value in rows:
        grid.add_row(label, Text(value))
    try:
        # pydantic's parser: a body nested too deeply is "not JSON" here, not a RecursionError.
        body = json.dumps(from_json(envelope.read_body(message)), indent=2, ensure_ascii=False)
    except (ValueError, envelope.EnvelopeError):
        body = "(not JSON)"
    return Group(grid, Text("Body", style="dim"), Text(mask(body)))


def render_done(done: Sequence[Done]) -> RenderableType:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("Seq", justify="right", no_wrap=True)
    copyable_column(table, "Request", (item.view.request_id for item in done))
    table.add_column("Result", overflow="fold", ratio=1)
    for item in done:
        table.add_row(
            str(item.view.sequence_number),
            Text(item.view.request_id),
            Text(item.result, style="" if item.ok else "yellow"),
        )
    return table


# The commands' flows; each returns its exit code.


def list_command(queues: Sequence[StageName], *, other_queues: bool = False) -> int:
    """With `other_queues`, also what OTHER_QUEUES dead-lettered, counted."""
    settings = settings_for("dlq list", ServiceBusSettings)

    async def look(client: ServiceBusClient) -> int:
        views = await list_dead_letters(client, queues)
        counts = await count_other_dead_letters(client) if other_queues else {}
        console.print(render_list(views, datetime.now(UTC)))
        if (others := render_other_queues(counts)) is not None:
            console.print(others)
        return 0

    return with_servicebus(settings, look)


def show_command(queue: StageName, sequence_number: int) -> int:
    """1 when there is no such dead letter."""
    settings = settings_for("dlq show", ServiceBusSettings)

    async def look(client: ServiceBusClient) -> int:
        message = await peek_one(client, queue, sequence_number)
        if message is None:
            errors.print(f"No dead letter {sequence_number} on {queue}.", markup=False)
            return 1
        console.print(render_one(queue, message, datetime.now(UTC)))
        return 0

    return with_servicebus(settings, look)


def selection_of(
    sequence_numbers: Iterable[int], reason: str | None, older_than: str | None, everything: bool
) -> Selection:
    """What the options select; exit 2 when they select nothing, name a reason the app does not know, or
    an age is malformed."""
    try:
        age = parse_age(older_than) if older_than else None
    except ValueError as error:
        raise fail(str(error), 2) from None
    selection = Selection(frozenset(sequence_numbers), reason and known_reason(reason), age, everything)
    if selection.is_empty():
        raise fail("Say which dead letters: sequence numbers, --reason, --older-than or --all.", 2)
    return selection


def known_reason(reason: str) -> str:
    """The reason as the app names it (any case), or exit 2 naming the closest one and every reason."""
    names = {known.value.lower(): known.value for known in REASONS}
    if reason.lower() in names:
        return names[reason.lower()]
    closest = difflib.get_close_matches(reason.lower(), names, n=1, cutoff=0.6)
    guess = f"did you mean {names[closest[0]]}? " if closest else ""
    raise fail(
        f"--reason {reason} is not a dead-letter reason of this app: {guess}The reasons are {', '.join(names.values())}. "
        "A dead letter with another reason is taken by its sequence number (`onboard dlq list`).",
        2,
    )


def act_command(act: str, queues: Sequence[StageName], selection: Selection, *, confirm: bool) -> int:
    """The one flow of replay and purge (`act`): select from what is there, confirm if asked, act per
    queue; 1 when nothing matched, the operator declined, or any selected dead letter was not handled."""
    settings = settings_for(f"dlq {act}", ServiceBusSettings)

    async def work(client: ServiceBusClient) -> int:
        now = datetime.now(UTC)
        chosen = [v for v in await list_dead_letters(client, queues) if selection.matches(v, now)]
        if not chosen:
            errors.print("No dead letter matches; nothing done. `onboard dlq list` shows what is there.")
            return 1
        if confirm:
            console.print(render_list(chosen, now))
            if not typer.confirm(confirm_question(act, len(chosen))):
                errors.print("Nothing done.")
                return 1
        done = []
        for queue in queues:
            mine = [v for v in chosen if v.queue is queue]
            if mine:
                done += await (replay(client, queue, mine, now) if act == "replay" else purge(client, queue, mine))
        console.print(render_done(done))
        return 0 if all(item.ok for item in done) else 1

    return with_servicebus(settings, work)

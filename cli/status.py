"""`onboard status`: one request's history, or where the requests stand, from the journal.

The counts by state cover every request whose latest transition falls in a window (`--since`,
default 24 hours), however many: the journal aggregates them while reading (`Journal.tally`).
Only the list of the latest requests is bounded (`--limit`), and the board's latest failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from azure.core.exceptions import AzureError
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from cli.dlq import parse_age
from cli.plumbing import DEFAULT_STATE_DIR, console, fail, talk_to_servicebus, until_interrupted, with_servicebus
from cli.settings import ENV_FILE, SettingsProblem, load_settings
from cli.tables import copyable_column
from cli.upstream import is_queued, peek_count, servicebus_client
from shared.contracts import OutcomeStatus, StageName
from shared.drift.model import Roster, SweepCounts
from shared.journal import Journal, RequestState, Transition, TransitionKind
from shared.journal.ports import LATEST_FAILURES, Tally, Where
from shared.settings import ServiceBusSettings

if TYPE_CHECKING:
    from azure.servicebus.aio import ServiceBusClient

DEFAULT_WINDOW = timedelta(hours=24)
FINISHED_WELL = frozenset({OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS})

_STYLES = {
    TransitionKind.PASSED_ON: "cyan",
    TransitionKind.RETRY_SCHEDULED: "yellow",
    TransitionKind.DEAD_LETTERED: "red",
    TransitionKind.FINISHED: "green",
    TransitionKind.CRASHED: "bold red",
}
_OUTCOME_STYLES = {OutcomeStatus.SUCCEEDED_WITH_WARNINGS: "yellow", OutcomeStatus.PLANNED: "cyan"}


def _time(at: datetime, *, milliseconds: bool = True) -> str:
    # Milliseconds tell apart transitions of one request; the year is left out so 80 columns suffice.
    return at.strftime("%m-%d %H:%M:%S.%f")[:-3] if milliseconds else at.strftime("%m-%d %H:%M")


def window_text(window: timedelta) -> str:
    """A window as `--since` takes it: 90s, 30m, 24h, 7d (days only from two on: "24h", not "1d")."""
    seconds = int(window.total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds % size == 0 and seconds >= (2 * size if unit == "d" else size):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def label_of(where: Where) -> str:
    """A finished request is told apart by its outcome (warnings and dry runs matter); otherwise the
    last decision."""
    if where.decision is TransitionKind.FINISHED and where.outcome_status is not None:
        return f"{TransitionKind.FINISHED} ({where.outcome_status})"
    return str(where.decision)


def state_of(state: RequestState) -> str:
    return label_of(Where(state.last_stage, state.last_decision, state.last_outcome_status))


def _style(decision: TransitionKind, outcome_status: OutcomeStatus | None) -> str:
    special = _OUTCOME_STYLES.get(outcome_status) if outcome_status is not None else None
    return special or _STYLES[decision]


def _state_text(state: RequestState) -> Text:
    return Text(state_of(state), style=_style(state.last_decision, state.last_outcome_status))


def _one_line(text: str) -> str:
    return " ".join(text.split())  # a cause may hold line breaks (exception text)


@dataclass(frozen=True)
class _CutLines:
    """Lines cut at the width with an ellipsis, then `hint` when any was cut."""

    lines: Sequence[Text]
    hint: str

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        cut = False
        for line in self.lines:
            cut = cut or line.cell_len > options.max_width
            shown = line.copy()
            shown.no_wrap, shown.overflow = True, "ellipsis"
            yield shown
        if cut:
            yield Text(self.hint, style="dim")


@dataclass(frozen=True)
class _History:
    """One request's transitions in a table whose Cause column takes the width the others leave,
    each cause cut to it with an ellipsis; the causes that were cut follow the table in full."""

    transitions: Sequence[Transition]
    about: str

    def _table(self, causes: Iterable[Text]) -> Table:
        table = Table(
            title=f"History of {self.about}", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True
        )
        table.add_column("UTC", no_wrap=True)
        table.add_column("Stage", no_wrap=True)
        table.add_column("Decision", no_wrap=True)
        table.add_column("Try", justify="right", no_wrap=True)
        table.add_column("Cause", no_wrap=True, overflow="ellipsis")
        for transition, cause in zip(self.transitions, causes, strict=True):
            # Text, not markup: a cause may hold brackets (exception text) that rich would interpret.
            table.add_row(
                _time(transition.at),
                str(transition.stage),
                Text(str(transition.decision), style=_STYLES[transition.decision]),
                str(transition.attempt),
                cause,
            )
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # What the other columns take (their cells are short and never wrap), hence what Cause gets.
        bare = Measurement.get(console, options, self._table(Text("") for _ in self.transitions)).maximum
        cause_width = max(options.max_width - (bare - len("Cause")), 12)
        causes: list[Text] = []
        cut: list[Transition] = []
        for transition in self.transitions:
            cause = Text(_one_line(transition.cause or ""))
            if cause.cell_len > cause_width:
                cause.truncate(cause_width, overflow="ellipsis")
                cut.append(transition)
            causes.append(cause)
        yield self._table(causes)
        if cut:
            yield Text("Causes in full", style="italic")
            for transition in cut:
                yield Text.assemble(
                    (_time(transition.at), "dim"),
                    f" {transition.stage} ",
                    (str(transition.decision), _STYLES[transition.decision]),
                    ": ",
                    transition.cause or "",
                )


def render_history(transitions: Sequence[Transition], *, request_id: str | None = None) -> RenderableType:
    """A table of one request's transitions, oldest first: time, stage, decision, attempt, cause (cut
    to the width; in full below the table)."""
    about = f"request {request_id}" if request_id else "this request"
    if not transitions:
        return Text(f"No transitions recorded for {about}.", style="yellow")
    return _History(transitions, about)


def _needs_its_cause(state: RequestState) -> bool:
    """Failures, retries and crashes say why; a plain success, a plan or a pass-on has nothing to add."""
    if not state.last_cause:
        return False
    if state.last_decision is TransitionKind.FINISHED:
        return state.last_outcome_status not in (OutcomeStatus.SUCCEEDED, OutcomeStatus.PLANNED)
    return state.last_decision is not TransitionKind.PASSED_ON


def render_summary(states: Sequence[RequestState], tally: Tally, window: timedelta = DEFAULT_WINDOW) -> RenderableType:
    """Every request of the window counted by state, then the latest transition of the latest
    requests (newest first, as given) and why those that stopped or wait did."""
    if not states and not tally.total:
        return Text("The journal holds no requests yet.", style="yellow")
    parts: list[RenderableType] = []
    if tally.total:
        counts: Counter[str] = Counter()
        for where, count in tally.counts.items():
            counts[label_of(where)] += count
        heading = f"By state: the {_plural(tally.total, 'request')} whose latest transition is in the last "
        parts.append(Text(heading + window_text(window), style="italic"))
        by_state = Table(box=box.SIMPLE_HEAD)
        by_state.add_column("State")
        by_state.add_column("Requests", justify="right")
        for label, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            by_state.add_row(label, f"{count:,}")
        parts.append(by_state)
    else:
        parts.append(Text(f"No request moved in the last {window_text(window)} (--since widens it).", style="yellow"))
    if not states:
        return Group(*parts)

    # The request id whole (it is copied into `onboard status ID`); the state and stage wrap at their
    # spaces, so at 80 columns a bulk id fits beside "finished (SucceededWithWarnings) at verify-delivery".
    # How many steps each took is in its history (`onboard status ID`).
    latest = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, show_edge=False)
    copyable_column(latest, "Request", (state.request_id for state in states))
    words = (word for state in states for word in state_of(state).split())
    latest.add_column("State, at stage", min_width=max((len(word) for word in words), default=0))
    latest.add_column("UTC", no_wrap=True)
    for state in states:
        latest.add_row(
            Text(state.request_id),
            Text.assemble(_state_text(state), f" at {state.last_stage}"),
            _time(state.last_at, milliseconds=False),
        )
    parts += [Text(f"The latest {_plural(len(states), 'request')}, newest first (--limit)", style="italic"), latest]

    # Below the table, not in a column (a cause is a sentence), one line each: `status ID` has it whole.
    causes = [
        Text.assemble(
            (state.request_id, "bold"), ": ", (_one_line(state.last_cause or ""), _STYLES[state.last_decision])
        )
        for state in states
        if _needs_its_cause(state)
    ]
    if causes:
        parts += [
            Text("Why they stopped or wait", style="italic"),
            _CutLines(causes, "Cut to one line: `onboard status REQUEST_ID` shows a cause whole."),
        ]
    return Group(*parts)


@dataclass(frozen=True)
class StatusReport:
    renderable: RenderableType
    unknown: bool  # the journal holds nothing about the request asked for

    def __rich__(self) -> RenderableType:
        return self.renderable


async def status_report(
    journal: Journal,
    request_id: str | None = None,
    *,
    limit: int = 50,
    since: timedelta = DEFAULT_WINDOW,
    now: datetime | None = None,
) -> StatusReport:
    """Read what `onboard status` prints, then close the journal."""
    try:
        if request_id is not None:
            history = await journal.history(request_id)
            return StatusReport(render_history(history, request_id=request_id), unknown=not history)
        tally = await journal.tally((now or datetime.now(UTC)) - since, failures=0)
        return StatusReport(render_summary(await journal.summary(limit), tally, since), unknown=False)
    finally:
        await journal.close()


# --- onboard status --watch: the whole pipeline on one screen ------------------------------------


def _finished_as(*statuses: OutcomeStatus) -> Callable[[Where], bool]:
    return lambda where: where.decision is TransitionKind.FINISHED and where.outcome_status in statuses


def _is(kind: TransitionKind) -> Callable[[Where], bool]:
    return lambda where: where.decision is kind


# Short headers (and collapsed padding): nine columns, "verify-delivery" and six-digit counts fit 80
# columns whole. "Done" is every finish but a dry run's, which is "Plan" (checked, nothing changed).
_BOARD_COLUMNS: tuple[tuple[str, Callable[[Where], bool]], ...] = (
    ("Pass", _is(TransitionKind.PASSED_ON)),
    ("Retry", _is(TransitionKind.RETRY_SCHEDULED)),
    ("Crash", _is(TransitionKind.CRASHED)),
    (
        "Done",
        lambda where: where.decision is TransitionKind.FINISHED and where.outcome_status is not OutcomeStatus.PLANNED,
    ),
    ("Plan", _finished_as(OutcomeStatus.PLANNED)),
    ("Dead", _is(TransitionKind.DEAD_LETTERED)),
)


BOARD_LEGEND = (
    "Each request counts once, where its latest transition left it. Queued, DLQ: on the stage's queue and "
    "its dead-letter queue now. Pass: passed on to the next stage. Retry: a retry is scheduled. Crash: failed "
    "unexpectedly, Service Bus delivers it again. Done: finished. Plan: a dry run planned it. Dead: "
    "dead-lettered, with its outcome."
)


@dataclass(frozen=True)
class QueueDepth:
    """Messages on a stage queue and its dead-letter queue, counted by peeking up to `cap`.

    Peeking needs only a data role (Azure Service Bus Data Receiver). The SDK's exact counts, the
    management client's queue runtime properties, need Manage rights (Data Owner), which the app's
    identity is not given (docs/deploy.md) and an operator watching need not have; the data plane
    (AMQP) offers no count. So a count that reached the cap is shown as "≥cap", and explained."""

    waiting: int
    dead_letters: int
    cap: int

    def shown(self, count: int) -> str:
        return f"≥{self.cap}" if count >= self.cap else str(count)

    @property
    def capped(self) -> bool:
        return max(self.waiting, self.dead_letters) >= self.cap


def _summary_line(tally: Tally, window: timedelta) -> Text:
    def count(test: Callable[[Where], bool]) -> int:
        return sum(n for where, n in tally.counts.items() if test(where))

    well = count(_finished_as(*FINISHED_WELL))
    planned = count(_finished_as(OutcomeStatus.PLANNED))
    dead = count(_is(TransitionKind.DEAD_LETTERED))
    moving = count(lambda where: where.decision is not TransitionKind.FINISHED) - dead
    other = tally.total - well - planned - dead - moving  # a finish without a known outcome: none expected
    said = [f"{well:,} finished well", f"{planned:,} planned (dry run)", f"{dead:,} failed", f"{moving:,} under way"]
    if other:
        said.append(f"{other:,} finished otherwise")
    head = f"{_plural(tally.total, 'request')} moved in the last {window_text(window)} (--since): "
    return Text(head + ", ".join(said), style="italic")


def drift_line(counts: SweepCounts) -> Text:
    """The drift watch's last sweep (docs/drift.md), in a line: its period, how far its fan-out got, and
    of the people it should check, how many it did, how many drift and how many it repaired."""
    if counts.sweep is None:
        return Text("Drift watch: no sweep yet.", style="italic")
    sweep = counts.sweep
    fanned = (
        f"fanned out {sweep.fanned_out:,} (done {sweep.fanned_out_at:%H:%M})"
        if sweep.fanned_out_at is not None
        else f"fanning out, {sweep.fanned_out:,} so far"
    )
    said = (
        f"Drift watch: sweep of {sweep.period}, started {sweep.started_at:%Y-%m-%d %H:%M}, {fanned}; "
        f"checked {counts.checked:,} of {counts.active:,} active, {counts.drifting:,} drifting (onboard drift), "
        f"{counts.repaired:,} repaired."
    )
    return Text(said, style="italic red" if counts.drifting else "italic")


async def read_drift_counts(journal: Journal) -> SweepCounts | None:
    """The last sweep's counts, or None when this journal keeps no roster."""
    if not isinstance(journal, Roster):
        return None
    latest = await journal.latest_sweep()
    return await journal.counts(latest.period if latest else None)


def render_board(
    tally: Tally,
    depths: dict[StageName, QueueDepth] | None,
    now: datetime,
    window: timedelta = DEFAULT_WINDOW,
    drift: SweepCounts | None = None,
) -> RenderableType:
    """Requests per stage and state (where each request's latest transition left it, for every
    request of the window), the queues' depth when Service Bus is reachable, and the latest
    failures; 80 columns wide at most."""
    table = Table(
        box=box.SIMPLE_HEAD, title=f"Pipeline at {now:%H:%M:%S} UTC", title_justify="left", collapse_padding=True
    )
    table.add_column("Stage", no_wrap=True)
    table.add_column("Queued", justify="right", no_wrap=True)
    for label, _ in _BOARD_COLUMNS:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("DLQ", justify="right", no_wrap=True)
    for stage in StageName:
        depth = depths.get(stage) if depths is not None else None
        cells = [depth.shown(depth.waiting) if depth else "-"]
        for _, test in _BOARD_COLUMNS:
            cells.append(str(sum(n for where, n in tally.counts.items() if where.stage is stage and test(where)) or ""))
        cells.append(depth.shown(depth.dead_letters) if depth else "-")
        table.add_row(str(stage), *cells)
    parts: list[RenderableType] = [table, _summary_line(tally, window)]
    if drift is not None:  # the journal keeps the drift watch's roster
        parts.append(drift_line(drift))
    if tally.latest_failures:
        parts.append(Text("Latest failures", style="bold"))
        lines = [
            Text.assemble(
                (_time(failure.at), "dim"),
                " ",
                (failure.request_id, "bold"),
                ": ",
                (_one_line(failure.cause or str(failure.decision)), "red"),
            )
            for failure in tally.latest_failures[:LATEST_FAILURES]
        ]
        parts.append(_CutLines(lines, "Cut to one line: `onboard status REQUEST_ID` shows a cause whole."))
    parts.append(Text(BOARD_LEGEND, style="dim"))
    if depths is None:
        parts.append(Text("Queue depths need ServiceBusConnection.", style="dim"))
    elif any(depth.capped for depth in depths.values()):
        cap = max(depth.cap for depth in depths.values())
        parts.append(
            Text(
                f"≥{cap}: at least; queues are counted by peeking, up to {cap} messages each (exact "
                "counts need Manage rights on the namespace).",
                style="dim",
            )
        )
    return Group(*parts)


# --- the command's flow ---------------------------------------------------------------------------

# Peeked per queue and refresh (20 round trips of 100 at most): more is shown as "≥2000". Exact counts
# would need the management client's runtime properties, hence Manage rights (QueueDepth).
WATCH_QUEUE_CAP = 2000
# The drift line is counted from the whole roster (in Table Storage a scan of every active membership):
# read once a minute, not every refresh. A sweep moves in minutes anyway.
DRIFT_COUNTS_EVERY = timedelta(minutes=1)


def status_command(
    request_id: str | None, journal_setting: str, *, limit: int, since: str, watch: bool, interval: float
) -> int:
    """Print a request's history, the summary, or (`watch`) the board; the exit code: 1 for a request
    id that is neither in the journal nor waiting on create-contact, 2 for a journal that cannot be named."""
    from shared.journal import JournalSettingError, open_journal, sqlite_file

    if watch and request_id is not None:
        raise fail("--watch shows the whole pipeline: leave out REQUEST_ID.", 2)
    try:
        window = parse_age(since)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--since") from None
    if window <= timedelta(0):
        raise typer.BadParameter("the window must be longer than 0s", param_hint="--since")
    try:
        local_file = sqlite_file(journal_setting)
        if local_file is not None and not local_file.exists():
            raise fail(_no_journal_at(local_file), 2)
        # Table Storage by URL signs in as the operator (DefaultAzureCredential: az login), who needs
        # "Storage Table Data Reader" on the table.
        journal = open_journal(journal_setting)
        if journal is None:
            raise fail("No journal named: set ONBOARDING_JOURNAL or --journal.", 2)
        if watch:
            return _watch(journal, interval, window)
        report = asyncio.run(status_report(journal, request_id, limit=limit, since=window))
    except JournalSettingError as error:
        raise fail(str(error), 2) from None
    except (AzureError, sqlite3.DatabaseError) as error:
        # Unreachable storage, a missing role, a file that is not a journal: one line, no traceback.
        raise fail(
            f"Could not read the journal: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        ) from None
    console.print(report)
    if request_id is not None and report.unknown:
        where, known = _where_unhandled(request_id)
        console.print(where, markup=False)
        if not known:
            return 1  # as for a search that finds nothing: scripts can tell
    return 0


def _no_journal_at(local_file: Path) -> str:
    """Where the journal was looked for, and where the settings naming it were: a command run in another
    directory than `onboard sandbox --write-env` finds neither."""
    if not ENV_FILE.exists():
        return (
            f"No journal at {local_file.resolve()}, and no .env in {Path.cwd()}: run the command in the directory "
            "that holds the .env `onboard sandbox --write-env` wrote, or set ONBOARDING_JOURNAL (or --journal) to "
            "the journal the app writes."
        )
    return (
        f"No journal at {local_file.resolve()}: set ONBOARDING_JOURNAL (or --journal) to the journal the app "
        f"writes, in {ENV_FILE.resolve()} or the environment (`onboard sandbox` keeps one in {DEFAULT_STATE_DIR}/ "
        "of the directory it runs in)."
    )


def _watch(journal: Journal, interval: float, window: timedelta) -> int:
    from rich.live import Live

    try:
        bus: ServiceBusSettings | None = load_settings(ServiceBusSettings)
    except SettingsProblem:
        bus = None  # the journal alone still shows where requests stand

    async def depths(client: ServiceBusClient) -> dict[StageName, QueueDepth]:
        counts = await asyncio.gather(
            *(
                peek_count(client, s.value, cap=WATCH_QUEUE_CAP, dead_letters=d)
                for s in StageName
                for d in (False, True)
            )
        )
        return {s: QueueDepth(counts[2 * i], counts[2 * i + 1], WATCH_QUEUE_CAP) for i, s in enumerate(StageName)}

    async def run() -> int:
        stop = until_interrupted()
        async with contextlib.AsyncExitStack() as resources:
            resources.push_async_callback(journal.close)
            client = await resources.enter_async_context(servicebus_client(bus)) if bus is not None else None

            drift: tuple[datetime, SweepCounts | None] | None = None  # when read, and what

            async def frame() -> RenderableType:
                nonlocal drift
                now = datetime.now(UTC)
                tally = await journal.tally(now - window)
                if drift is None or now - drift[0] >= DRIFT_COUNTS_EVERY:
                    drift = (now, await read_drift_counts(journal))
                return render_board(tally, await depths(client) if client else None, now, window, drift[1])

            if not console.is_terminal:
                console.print(await frame())
                return 0
            with Live(await frame(), console=console, auto_refresh=False) as live:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)
                    if not stop.is_set():
                        live.update(await frame(), refresh=True)
        return 0

    return talk_to_servicebus(bus, run()) if bus is not None else asyncio.run(run())


def _where_unhandled(request_id: str) -> tuple[str, bool]:
    """What to say of a request with no history, and whether it is known at all (waiting on the queue)."""
    try:
        settings = load_settings(ServiceBusSettings)
    except SettingsProblem:
        return (
            "Unknown id, or not yet handled (set ServiceBusConnection to look for it on queue create-contact).",
            False,
        )

    async def look(client: ServiceBusClient) -> bool:
        return await is_queued(client, StageName.CREATE_CONTACT, request_id)

    if with_servicebus(settings, look):
        return f"Queued on {StageName.CREATE_CONTACT}, not yet handled: is `onboard host` running?", True
    return f"Unknown id: no history, and not waiting on queue {StageName.CREATE_CONTACT}.", False

"""`onboard status`: one request's history, or where the latest requests stand, from the journal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shared.contracts import OutcomeStatus, StageName
from shared.journal import Journal, RequestState, Transition, TransitionKind

_STYLES = {
    TransitionKind.PASSED_ON: "cyan",
    TransitionKind.RETRY_SCHEDULED: "yellow",
    TransitionKind.DEAD_LETTERED: "red",
    TransitionKind.FINISHED: "green",
    TransitionKind.CRASHED: "bold red",
}


def _time(at: datetime, *, milliseconds: bool = True) -> str:
    # Milliseconds tell apart transitions of one request; the year is left out so 80 columns suffice.
    return at.strftime("%m-%d %H:%M:%S.%f")[:-3] if milliseconds else at.strftime("%Y-%m-%d %H:%M")


def state_of(state: RequestState) -> str:
    """A finished request is told apart by its outcome (warnings matter); otherwise the last decision."""
    if state.last_decision is TransitionKind.FINISHED and state.last_outcome_status is not None:
        return f"{TransitionKind.FINISHED} ({state.last_outcome_status})"
    return str(state.last_decision)


def _state_text(state: RequestState) -> Text:
    style = _STYLES[state.last_decision]
    if state.last_outcome_status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS:
        style = "yellow"
    return Text(state_of(state), style=style)


def render_history(transitions: Sequence[Transition], *, request_id: str | None = None) -> RenderableType:
    """A table of one request's transitions, oldest first: time, stage, decision, attempt, cause."""
    about = f"request {request_id}" if request_id else "this request"
    if not transitions:
        return Text(f"No transitions recorded for {about}.", style="yellow")
    table = Table(title=f"History of {about}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("UTC", no_wrap=True)
    table.add_column("Stage", no_wrap=True)
    table.add_column("Decision", no_wrap=True)
    table.add_column("Try", justify="right")
    table.add_column("Cause")  # wraps at words; the other columns stay whole
    for transition in transitions:
        # Text, not markup: a cause may hold brackets (exception text) that rich would interpret.
        table.add_row(
            _time(transition.at),
            str(transition.stage),
            Text(str(transition.decision), style=_STYLES[transition.decision]),
            str(transition.attempt),
            Text(transition.cause or ""),
        )
    return table


def _needs_its_cause(state: RequestState) -> bool:
    """Failures, retries and crashes say why; a plain success or pass-on has nothing to add."""
    if not state.last_cause:
        return False
    if state.last_decision is TransitionKind.FINISHED:
        return state.last_outcome_status is not OutcomeStatus.SUCCEEDED
    return state.last_decision is not TransitionKind.PASSED_ON


def render_summary(states: Sequence[RequestState]) -> RenderableType:
    """Counts by state, then the latest transition of each request (newest first, as given)."""
    if not states:
        return Text("The journal holds no requests yet.", style="yellow")
    counts = Counter(state_of(state) for state in states)
    heading = Text(f"The latest {len(states)} request{'s' if len(states) != 1 else ''} by state", style="italic")
    by_state = Table(box=box.SIMPLE_HEAD)
    by_state.add_column("State")
    by_state.add_column("Requests", justify="right")
    for label, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        by_state.add_row(label, str(count))

    latest = Table(box=box.SIMPLE_HEAD)
    latest.add_column("Request", no_wrap=True)
    latest.add_column("State", no_wrap=True)
    latest.add_column("Stage", no_wrap=True)
    latest.add_column("UTC", no_wrap=True)
    latest.add_column("Steps", justify="right")
    for state in states:
        latest.add_row(
            Text(state.request_id),
            _state_text(state),
            str(state.last_stage),
            _time(state.last_at, milliseconds=False),
            str(state.attempts),
        )

    # Below the table, not in a column: a cause is a sentence, and a narrow column cuts it mid-word.
    causes = [
        Text.assemble((state.request_id, "bold"), ": ", (state.last_cause or "", _STYLES[state.last_decision]))
        for state in states
        if _needs_its_cause(state)
    ]
    parts: list[RenderableType] = [heading, by_state, Text("Latest transition per request", style="italic"), latest]
    if causes:
        parts += [Text("Why they stopped or wait", style="italic"), *causes]
    return Group(*parts)


@dataclass(frozen=True)
class StatusReport:
    renderable: RenderableType
    unknown: bool  # the journal holds nothing about the request asked for

    def __rich__(self) -> RenderableType:
        return self.renderable


async def status_report(journal: Journal, request_id: str | None = None, *, limit: int = 50) -> StatusReport:
    """Read what `onboard status` prints, then close the journal."""
    try:
        if request_id is not None:
            history = await journal.history(request_id)
            return StatusReport(render_history(history, request_id=request_id), unknown=not history)
        return StatusReport(render_summary(await journal.summary(limit)), unknown=False)
    finally:
        await journal.close()


# --- onboard status --watch: the whole pipeline on one screen ------------------------------------

# Short headers: eight columns and "verify-delivery" must fit 80 columns whole.
_BOARD_COLUMNS = (
    ("Queued", None),
    ("Passed", TransitionKind.PASSED_ON),
    ("Retry", TransitionKind.RETRY_SCHEDULED),
    ("Crash", TransitionKind.CRASHED),
    ("Done", TransitionKind.FINISHED),
    ("Dead", TransitionKind.DEAD_LETTERED),
)
LATEST_FAILURES = 5


@dataclass(frozen=True)
class QueueDepth:
    """Messages on a stage queue and its dead-letter queue, counted by peeking up to `cap`."""

    waiting: int
    dead_letters: int
    cap: int

    def shown(self, count: int) -> str:
        return f"{count}+" if count >= self.cap else str(count)


def render_board(
    states: Sequence[RequestState], depths: dict[StageName, QueueDepth] | None, now: datetime
) -> RenderableType:
    """Requests per stage and state (where each request's latest transition left it), the queues'
    depth when Service Bus is reachable, and the latest failures; 80 columns wide at most."""
    counts = Counter((state.last_stage, state.last_decision) for state in states)
    table = Table(box=box.SIMPLE_HEAD, title=f"Pipeline at {now:%H:%M:%S} UTC", title_justify="left")
    table.add_column("Stage", no_wrap=True)
    for label, _ in _BOARD_COLUMNS:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("DLQ", justify="right", no_wrap=True)
    for stage in StageName:
        depth = depths.get(stage) if depths is not None else None
        cells = [depth.shown(depth.waiting) if depth else "-"]
        cells += [str(counts.get((stage, kind), 0) or "") for _, kind in _BOARD_COLUMNS[1:]]
        cells.append(depth.shown(depth.dead_letters) if depth else "-")
        table.add_row(str(stage), *cells)
    finished = [s for s in states if s.last_decision is TransitionKind.FINISHED]
    succeeded = sum(
        1 for s in finished if s.last_outcome_status in (OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS)
    )
    plural = "" if len(states) == 1 else "s"
    summary = Text(f"{len(states)} recent request{plural} in the journal; {succeeded} finished well", style="italic")
    failures = [s for s in states if s.last_decision in (TransitionKind.DEAD_LETTERED, TransitionKind.CRASHED)]
    parts: list[RenderableType] = [table, summary]
    if failures:
        parts.append(Text("Latest failures", style="bold"))
        for state in failures[:LATEST_FAILURES]:
            cause = state.last_cause or str(state.last_decision)
            line = Text.assemble((_time(state.last_at), "dim"), " ", (state.request_id, "bold"), ": ", (cause, "red"))
            line.truncate(80, overflow="ellipsis")
            parts.append(line)
    if depths is None:
        parts.append(Text("Queue depths need ServiceBusConnection.", style="dim"))
    return Group(*parts)

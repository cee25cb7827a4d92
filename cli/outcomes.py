"""An outcome event as a block of labelled lines: readable at 80 columns, details wrapped at words."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shared.contracts import OutcomeEvent, OutcomeStatus, RequestAction

NO_SUCCESS = 3  # a waiting command's exit code when a request failed or had no outcome


def wait_exit_code(outcomes: Iterable[OutcomeEvent | None]) -> int:
    """The one rule for every waiting command (submit, bulk; docs/commands.md): 0 when every request
    succeeded (or was planned), 3 when any failed or had none (None). A request Service Bus dropped as a
    duplicate counts with the outcome of its earlier run, which stands."""
    return NO_SUCCESS if any(o is None or o.status is OutcomeStatus.FAILED for o in outcomes) else 0


_STATUS_STYLES = {
    OutcomeStatus.SUCCEEDED: "green",
    OutcomeStatus.SUCCEEDED_WITH_WARNINGS: "yellow",
    OutcomeStatus.FAILED: "red",
    OutcomeStatus.PLANNED: "cyan",
}


def outcome_lines(outcome: OutcomeEvent) -> list[tuple[str, Text]]:
    """(label, value) pairs; Text, not markup, because a description may hold brackets."""
    status = Text(str(outcome.status), style=_STATUS_STYLES.get(outcome.status, ""))
    if outcome.reason:
        status.append(f": {outcome.reason}")
    lines = [("Outcome", status)]
    onboarding = outcome.action in (None, RequestAction.ONBOARD)
    if not onboarding:
        lines.append(("Action", Text(str(outcome.action))))
    if outcome.group:
        lines.append(("Group", Text(f"{outcome.group.display_name} ({outcome.group.kind})")))
    if outcome.recipient:
        # An onboarding says whether it created the recipient; an offboard or update whether the app did.
        mark = " (new)" if onboarding else " (created by this app)"
        lines.append(("Recipient", Text(f"{outcome.recipient.kind}{mark if outcome.recipient.created else ''}")))
    lines.append(("Details", Text(outcome.description)))
    lines.extend(("Change", Text(change)) for change in outcome.changes)
    lines.extend(("Warning", Text(warning, style="yellow")) for warning in outcome.warnings)
    return lines


def labelled_block(heading: Text, lines: list[tuple[str, Text]]) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()  # wraps at word boundaries within the terminal's width
    for label, value in lines:
        grid.add_row(f"  {label}", value)
    return Group(heading, grid)


def render_outcome(outcome: OutcomeEvent) -> RenderableType:
    return labelled_block(Text(f"Request {outcome.request_id}", style="bold"), outcome_lines(outcome))

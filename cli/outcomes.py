"""An outcome event as a block of labelled lines: readable at 80 columns, details wrapped at words."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shared.contracts import OutcomeEvent, OutcomeStatus

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
    if outcome.group:
        lines.append(("Group", Text(f"{outcome.group.display_name} ({outcome.group.kind})")))
    if outcome.recipient:
        lines.append(("Recipient", Text(f"{outcome.recipient.kind}{' (new)' if outcome.recipient.created else ''}")))
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

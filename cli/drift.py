"""`onboard drift`: the open drift findings, from the roster beside the journal (docs/drift.md).

One row per finding of a membership that a sweep found no longer as the onboarding left it, the longest
drifting first. The exit code says whether any is open, so a scheduled job can alert on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from cli.leases import read_beside_journal
from shared.drift.model import Membership, Roster
from shared.drift.roster import open_findings
from shared.journal import Journal
from shared.logs import mask_emails


def render_drift(drifting: Sequence[Membership]) -> Table | str:
    if not drifting:
        return "No open drift finding: every membership the last checks saw is as its onboarding left it."
    table = Table(box=box.SIMPLE, title="Open drift findings (UTC)", title_justify="left")
    for column in ("person", "group", "finding", "since", "last seen right", "fix"):
        table.add_column(column, overflow="fold")
    for membership in drifting:
        since = membership.drifting_since or membership.updated_at
        for finding in open_findings(membership):
            table.add_row(
                mask_emails(membership.external_email),  # as the logs and the journal show a person
                membership.group.mail,
                finding.kind.value,
                f"{since:%Y-%m-%d %H:%M}",
                f"{membership.last_seen_right_at:%Y-%m-%d %H:%M}",
                mask_emails(finding.fix),
            )
    return table


def drift_command(journal_setting: str) -> int:
    """Print the open findings; exit 1 when any is open, 0 when none, 2 when the roster cannot be read."""

    async def read(journal: Journal) -> list[Membership]:
        if not isinstance(journal, Roster):
            return []
        return await journal.drifting()

    drifting = read_beside_journal(journal_setting, "the drift watch's roster", read)
    Console().print(render_drift(drifting))
    return 1 if drifting else 0

"""`onboard leases`: the memberships that end soon, soonest first, from the lease book beside the journal.

An active lease whose end has passed is flagged: its wake-up has not acted (the app was down, or the
wake-up crashed into the `leases` queue's dead letters), and nothing removes the membership until it does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from azure.core.exceptions import AzureError
from rich import box
from rich.console import Console
from rich.table import Table

from cli.dlq import parse_age
from cli.plumbing import DEFAULT_STATE_DIR, fail
from cli.status import window_text
from shared.journal import Journal
from shared.journal.model import Lease
from shared.journal.ports import LeaseBook
from shared.logs import mask_emails

T = TypeVar("T")


def render_leases(leases: Sequence[Lease], now: datetime, within: timedelta) -> Table | str:
    if not leases:
        return f"No lease ends within {window_text(within)}."
    table = Table(box=box.SIMPLE, title=f"Leases ending within {window_text(within)} (UTC)", title_justify="left")
    for column in ("ends", "in", "person", "group", "source", "set by request", "notice"):
        table.add_column(column, overflow="fold")
    for lease in leases:
        left = lease.ends_at - now
        when = "OVERDUE: its wake-up has not acted" if left <= timedelta(0) else _left(left)
        table.add_row(
            f"{lease.ends_at:%Y-%m-%d %H:%M}",
            when,
            mask_emails(lease.external_email),  # as the logs and the journal show a person
            lease.group_mail,
            lease.source_system,
            lease.request_id,
            f"{lease.notice_at:%Y-%m-%d %H:%M}",
            style="red" if left <= timedelta(0) else None,
        )
    return table


def _left(span: timedelta) -> str:
    """Time left, to the two largest units: 6d 4h, 3h 12m, 45s."""
    seconds = int(span.total_seconds())
    days, hours, minutes = seconds // 86400, seconds % 86400 // 3600, seconds % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else (f"{minutes}m" if minutes else f"{seconds}s")


def leases_command(journal_setting: str, within: str) -> int:
    """Print the active leases ending within `within`; exit 2 for a journal that cannot be named or read."""
    try:
        window = parse_age(within)
    except ValueError as error:
        raise fail(f"--within: {error}", 2) from None
    now = datetime.now(UTC)

    async def read(journal: Journal) -> list[Lease]:
        if not isinstance(journal, LeaseBook):
            raise fail("This journal keeps no leases.", 2)
        return await journal.leases(ending_before=now + window)

    leases = read_beside_journal(journal_setting, "the leases", read)
    Console().print(render_leases(leases, now, window))  # made now: the terminal's width as it is now
    return 0


def read_beside_journal(journal_setting: str, what: str, read: Callable[[Journal], Awaitable[T]]) -> T:
    """What `read` reads from the store the journal setting names (leases, the roster), the journal closed
    after; a journal that cannot be named, found or read is a one-line failure with exit code 2."""
    from shared.journal import JournalSettingError, open_journal, sqlite_file

    try:
        local_file = sqlite_file(journal_setting)
        if local_file is not None and not local_file.exists():
            raise fail(
                f"No journal at {local_file}. Run `onboard sandbox` (it keeps one in {DEFAULT_STATE_DIR}/) "
                "or set ONBOARDING_JOURNAL to the journal the app writes.",
                2,
            )
        journal = open_journal(journal_setting)  # Table Storage by URL signs in as the operator (az login)
        if journal is None:
            raise fail("No journal named: set ONBOARDING_JOURNAL or --journal.", 2)
        return asyncio.run(_closing(journal, read))
    except JournalSettingError as error:
        raise fail(str(error), 2) from None
    except (AzureError, sqlite3.DatabaseError) as error:
        raise fail(
            f"Could not read {what}: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}", 2
        ) from None


async def _closing(journal: Journal, read: Callable[[Journal], Awaitable[T]]) -> T:
    try:
        return await read(journal)
    finally:
        await journal.close()

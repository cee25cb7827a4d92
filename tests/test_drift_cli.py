"""`onboard drift` and the drift line of `onboard status --watch`, read from a SQLite roster (pure)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from cli.status import drift_line, read_drift_counts
from shared.drift.model import Sweep
from shared.journal import SqliteJournal
from tests.journal.test_roster import NOW, REMOVED, REPAIRED, TODAY, _membership


def _run(journal: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["drift", "--journal", f"sqlite:{journal}"], env={"COLUMNS": "200"})
    return result.exit_code, result.output


async def _roster(path: Path) -> SqliteJournal:
    return SqliteJournal(path)


def test_onboard_drift_lists_open_findings_masked_and_exits_1_only_when_any(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    missing_code, missing = _run(path)
    assert missing_code == 2 and "No journal at" in missing

    async def keep() -> None:
        roster = await _roster(path)
        try:
            ana, ben = _membership("ana.silva@fabrikam.example"), _membership("ben.okafor@fabrikam.example")
            await roster.keep_membership(ana)
            await roster.keep_membership(ben)
            await roster.record_check(ben.key, TODAY, [REPAIRED], NOW)  # repaired by the watch: not open
        finally:
            await roster.close()

    asyncio.run(keep())
    code, output = _run(path)
    assert (code, "No open drift finding") == (0, output.strip()[:21])

    async def drift() -> None:
        roster = await _roster(path)
        try:
            await roster.record_check(_membership("ana.silva@fabrikam.example").key, TODAY, [REMOVED], NOW)
        finally:
            await roster.close()

    asyncio.run(drift())
    code, output = _run(path)
    assert code == 1, output
    assert "NotAMember" in output and "falcon@contoso.com" in output and "SenderAuthentication" not in output
    assert "ana.silva@fabrikam.example" not in output  # masked, as the logs show a person


def test_the_watch_line_shows_the_last_sweep_and_its_counts(tmp_path: Path) -> None:
    async def counts() -> str:
        roster = await _roster(tmp_path / "journal.db")
        try:
            empty = await read_drift_counts(roster)
            assert empty is not None and drift_line(empty).plain == "Drift watch: no sweep yet."
            ana = _membership("ana.silva@fabrikam.example")
            await roster.keep_membership(ana)
            await roster.keep_membership(_membership("ben.okafor@fabrikam.example"))
            await roster.keep_sweep(Sweep(period=TODAY, started_at=NOW, fanned_out=2, fanned_out_at=NOW))
            await roster.record_check(ana.key, TODAY, [REMOVED], NOW + timedelta(minutes=1))
            found = await read_drift_counts(roster)
            assert found is not None
            console = Console(width=80, record=True)
            console.print(drift_line(found))
            return " ".join(console.export_text().split())
        finally:
            await roster.close()

    assert asyncio.run(counts()) == (
        "Drift watch: sweep of 20261207T000000Z, started 2026-12-07 09:00, fanned out 2 (done 09:00); "
        "checked 1 of 2 active, 1 drifting (onboard drift), 0 repaired."
    )

"""`onboard status --watch`: requests per stage and state, queue depths and the latest failures, at
80 columns, from the journal the app writes and the emulator's queues."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from cli.status import QueueDepth, render_board
from shared.contracts import OutcomeStatus, StageName
from shared.journal import SqliteJournal, Transition, TransitionKind
from shared.journal.ports import Tally, Where
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack
from tests.fixtures.pipeline import onboard
from tests.samples import PARTNERS, sample_request

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
NO_SERVICEBUS: dict[str, str | None] = {
    SERVICEBUS_CONNECTION: None,
    f"{SERVICEBUS_CONNECTION}__fullyQualifiedNamespace": None,
}


def rendered(renderable: object) -> str:
    console = Console(width=80, record=True)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


def board_rows(text: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()[1:]
        for line in text.splitlines()
        if line.strip().startswith(("create", "add", "verify"))
    }


def failure(request_id: str, cause: str) -> Transition:
    return Transition(
        request_id=request_id,
        stage=StageName.ADD_MEMBER,
        decision=TransitionKind.DEAD_LETTERED,
        attempt=1,
        cause=cause,
        outcome_status=OutcomeStatus.FAILED,
        at=NOW - timedelta(minutes=1),
    )


def test_the_board_counts_per_stage_and_lists_the_latest_failures_in_80_columns() -> None:
    counts = {
        Where(StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED): 1,
        Where(StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, OutcomeStatus.PLANNED): 2,
        Where(StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED, None): 1,
        Where(StageName.ADD_MEMBER, TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED): 1,
    }
    tally = Tally(NOW - timedelta(hours=24), counts, [failure("r-3", "PermissionDenied: " + "x" * 200)])
    depths = {stage: QueueDepth(waiting=3, dead_letters=0, cap=2000) for stage in StageName}
    depths[StageName.CREATE_CONTACT] = QueueDepth(waiting=2000, dead_letters=1, cap=2000)

    text = rendered(render_board(tally, depths, NOW))

    assert max(len(line) for line in text.splitlines()) <= 80
    header = "Pipeline at 12:00:00 UTC Stage Queued Pass Retry Crash Done Plan Dead DLQ"
    assert " ".join(text.split()[:13]) == header
    rows = board_rows(text)
    assert rows["create-contact"] == ["≥2000", "1"]
    assert rows["add-member"] == ["3", "1", "1", "0"]  # waiting, retrying, dead, DLQ (empty cells skipped)
    assert rows["verify-delivery"] == ["3", "1", "2", "0"]  # waiting, done, planned, DLQ
    summary = " ".join(text.split("Latest failures")[0].split("verify-delivery")[1].split()[4:])
    assert summary == (
        "5 requests moved in the last 24h (--since): 1 finished well, 2 planned (dry run), 1 failed, 1 under way"
    )
    (cut,) = [line for line in text.splitlines() if "r-3: PermissionDenied" in line]
    assert cut.endswith("…") and "shows a cause whole" in text
    assert "≥2000: at least" in text and "Manage rights" in text
    legend = " ".join(text.split("shows a cause whole.")[1].split())
    for column in ("Queued, DLQ:", "Pass:", "Retry:", "Crash:", "Done:", "Plan:", "Dead:"):  # each header said
        assert column in legend
    assert "Queue depths need" not in text
    uncapped = {stage: QueueDepth(waiting=3, dead_letters=0, cap=2000) for stage in StageName}
    assert "at least" not in rendered(render_board(tally, uncapped, NOW))
    assert "Queue depths need ServiceBusConnection" in rendered(render_board(tally, None, NOW))


ENDS = (
    (TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED, StageName.VERIFY_DELIVERY),
    (TransitionKind.FINISHED, OutcomeStatus.PLANNED, StageName.VERIFY_DELIVERY),
    (TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED, StageName.ADD_MEMBER),
)


def write_bulk_run(database: Path, now: datetime, requests: int) -> None:
    """A journal as the app leaves it after a bulk run, written directly (fast): each request passed
    create-contact, then one in three finished, one in three was planned (a dry run), one in three
    was dead-lettered; one more request ended two days ago."""
    rows: list[Transition] = []
    for n in range(requests):
        at = now - timedelta(minutes=50) + timedelta(seconds=n)
        rows.append(
            Transition(
                request_id=f"b-{n}", stage=StageName.CREATE_CONTACT, decision=TransitionKind.PASSED_ON, attempt=1, at=at
            )
        )
        kind, status, stage = ENDS[n % 3]
        rows.append(
            Transition(
                request_id=f"b-{n}",
                stage=stage,
                decision=kind,
                attempt=1,
                cause=f"PermissionDenied: no role ({n})" if status is OutcomeStatus.FAILED else str(status),
                outcome_status=status,
                at=at + timedelta(milliseconds=500),
            )
        )
    rows.append(
        Transition(
            request_id="long-ago",
            stage=StageName.VERIFY_DELIVERY,
            decision=TransitionKind.FINISHED,
            outcome_status=OutcomeStatus.SUCCEEDED,
            attempt=1,
            at=now - timedelta(days=2),
        )
    )

    async def record() -> None:
        journal = SqliteJournal(database)
        for transition in rows:
            await journal.record(transition)
        await journal.close()

    asyncio.run(record())


def test_watch_and_the_summary_count_a_bulk_run_larger_than_any_limit_exactly(tmp_path: Path) -> None:
    database = tmp_path / "journal.db"
    write_bulk_run(database, datetime.now(UTC), 1_200)
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(DISTINCT request_id) FROM transitions").fetchone() == (1_201,)
    env = {"ONBOARDING_JOURNAL": f"sqlite:{database}", "COLUMNS": "80", **NO_SERVICEBUS}

    watched = CliRunner().invoke(app, ["status", "--watch"], env=env)

    assert watched.exit_code == 0, watched.output
    assert max(len(line) for line in watched.output.splitlines()) <= 80
    rows = board_rows(watched.output)
    assert rows["add-member"] == ["-", "400", "-"]  # dead
    assert rows["verify-delivery"] == ["-", "400", "400", "-"]  # done, planned
    said = " ".join(watched.output.split())
    assert (
        "1,200 requests moved in the last 24h (--since): 400 finished well, 400 planned (dry run), 400 failed" in said
    )
    failures = watched.output.split("Latest failures")[1]
    assert [line.split()[2] for line in failures.splitlines()[1:6]] == [
        f"b-{n}:" for n in (1199, 1196, 1193, 1190, 1187)
    ]

    summary = CliRunner().invoke(app, ["status", "--limit", "3"], env=env | {"COLUMNS": "120"})
    assert summary.exit_code == 0, summary.output
    assert "By state: the 1,200 requests whose latest transition is in the last 24h" in summary.output
    by_state = summary.output.split("The latest 3 requests")[0].splitlines()
    counts = {" ".join(line.split()[:-1]): line.split()[-1] for line in by_state if "finished (" in line}
    assert counts == {"finished (Planned)": "400", "finished (Succeeded)": "400"}
    assert "The latest 3 requests" in summary.output

    narrow = CliRunner().invoke(app, ["status", "--watch", "--since", "30m"], env=env)
    assert narrow.exit_code == 0, narrow.output
    assert "in the last 30m" in narrow.output and "1,200 requests" not in narrow.output
    wide = CliRunner().invoke(app, ["status", "--since", "3d"], env=env | {"COLUMNS": "120"})
    assert "By state: the 1,201 requests whose latest transition is in the last 3d" in wide.output
    bad = CliRunner().invoke(app, ["status", "--since", "2w"], env=env)
    assert bad.exit_code == 2 and "is not an age" in bad.output


@pytest.mark.stack
def test_watch_off_a_terminal_prints_one_snapshot_of_the_real_pipeline(stack: LocalStack) -> None:
    stack.sandbox.inject("exchange", 403, operation="Add-DistributionGroupMember")
    requests = [sample_request(f"watch-{n}", f"w{n}@fabrikam.example", f"W {n}", PARTNERS) for n in range(2)]
    planned = sample_request("watch-dry", "dry@fabrikam.example", "Dry Run", PARTNERS).model_copy(
        update={"dry_run": True}
    )
    outcomes = asyncio.run(onboard(stack, [*requests, planned]))
    assert sorted(o.status for o in outcomes.values()) == [
        OutcomeStatus.FAILED,
        OutcomeStatus.PLANNED,
        OutcomeStatus.SUCCEEDED,
    ]

    env = {
        SERVICEBUS_CONNECTION: stack.environment[SERVICEBUS_CONNECTION],
        "ONBOARDING_JOURNAL": stack.environment["ONBOARDING_JOURNAL"],
        "COLUMNS": "80",
    }
    result = CliRunner().invoke(app, ["status", "--watch"], env=env)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "Latest failures" in result.output and "PermissionDenied" in result.output
    add_member = next(line for line in result.output.splitlines() if line.strip().startswith("add-member"))
    assert add_member.split()[-2:] == ["1", "1"]  # one dead-lettered there, and its dead letter on the DLQ
    # The dry run is planned, neither finished well nor failed.
    said = " ".join(result.output.split())
    assert "3 requests moved in the last 24h (--since): 1 finished well, 1 planned (dry run), 1 failed" in said
    refused = CliRunner().invoke(app, ["status", "watch-0", "--watch"], env=env)
    assert refused.exit_code == 2 and "leave out REQUEST_ID" in refused.output

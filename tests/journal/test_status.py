"""What `onboard status` prints, rendered to plain text, and the counts it reads from both journals:
SQLite (a file in tmp_path) and Table Storage (Azurite)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console, RenderableType

from cli.status import render_history, render_summary, state_of, status_report
from shared.contracts import OutcomeStatus, StageName
from shared.journal import Journal, RequestState, SqliteJournal, Transition, TransitionKind
from shared.journal.ports import Tally, Where
from shared.journal.table_storage import UnsortedResultsError, _latest_per_partition

T0 = datetime(2026, 11, 23, 9, 0, 0, 250000, tzinfo=UTC)


def text_of(renderable: RenderableType, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def tally_of(states: list[RequestState]) -> Tally:
    counts: dict[Where, int] = {}
    for one in states:
        where = Where(one.last_stage, one.last_decision, one.last_outcome_status)
        counts[where] = counts.get(where, 0) + 1
    return Tally(T0 - timedelta(days=1), counts, [])


def state(
    request_id: str,
    decision: TransitionKind,
    outcome: OutcomeStatus | None = None,
    attempts: int = 1,
    cause: str | None = None,
) -> RequestState:
    return RequestState(
        request_id=request_id,
        last_stage=StageName.VERIFY_DELIVERY,
        last_decision=decision,
        last_at=T0,
        last_outcome_status=outcome,
        last_cause=cause,
        attempts=attempts,
    )


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_history_shows_each_transition_with_its_cause_verbatim() -> None:
    transitions = [
        Transition(
            request_id="hr-1", stage=StageName.CREATE_CONTACT, decision=TransitionKind.PASSED_ON, attempt=1, at=T0
        ),
        Transition(
            request_id="hr-1",
            stage=StageName.ADD_MEMBER,
            decision=TransitionKind.CRASHED,
            attempt=2,
            cause="KeyError: [bold]not markup[/bold]",
            at=T0 + timedelta(seconds=3),
        ),
    ]

    text = text_of(render_history(transitions, request_id="hr-1"))

    assert "History of request hr-1" in text
    lines = [line for line in text.splitlines() if "11-23 09:00" in line]
    assert "11-23 09:00:00.250" in lines[0] and "create-contact" in lines[0] and "passed-on" in lines[0]
    assert "add-member" in lines[1] and "crashed" in lines[1] and " 2 " in lines[1]
    assert "KeyError: [bold]not markup[/bold]" in lines[1]


def test_history_of_an_unknown_request_says_so() -> None:
    assert "No transitions recorded for request hr-9." in text_of(render_history([], request_id="hr-9"))


def test_summary_counts_by_state_and_lists_the_latest_per_request() -> None:
    states = [
        state("hr-1", TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED, attempts=3),
        state("hr-2", TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED),
        state("hr-3", TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS),
        state("hr-4", TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED),
        state("hr-5", TransitionKind.RETRY_SCHEDULED),
    ]

    text = text_of(render_summary(states, tally_of(states)))

    assert "By state: the 5 requests whose latest transition is in the last 24h" in text
    by_state = text[: text.index("The latest 5 requests, newest first")]
    counts = dict(cells(line) for line in by_state.splitlines() if re.fullmatch(r"\s+\S.*\S\s{2,}\d+\s*", line))
    assert counts == {
        "finished (Succeeded)": "2",
        "finished (SucceededWithWarnings)": "1",
        "dead-lettered": "1",
        "retry-scheduled": "1",
    }
    rows = [line for line in text.splitlines() if "hr-" in line]
    assert [cells(row)[0] for row in rows] == ["hr-1", "hr-2", "hr-3", "hr-4", "hr-5"]
    assert cells(rows[0])[1] == "finished (Succeeded) at verify-delivery"


def test_summary_says_why_a_request_failed_waits_or_warned_and_not_why_it_succeeded() -> None:
    states = [
        state("hr-1", TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED, cause="Succeeded"),
        state("hr-2", TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED, cause="GroupNotFound: no such group"),
        state("hr-3", TransitionKind.RETRY_SCHEDULED, cause="Throttled: 429 from Graph"),
        state("hr-4", TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS, cause="delivery unconfirmed"),
    ]

    text = text_of(render_summary(states, tally_of(states)))

    why = text[text.index("Why they stopped or wait") :]
    assert "hr-2: GroupNotFound: no such group" in why
    assert "hr-3: Throttled: 429 from Graph" in why
    assert "hr-4: delivery unconfirmed" in why
    assert "hr-1" not in why


def test_state_names_the_outcome_only_for_finished_requests() -> None:
    assert state_of(state("a", TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED)) == "dead-lettered"
    assert state_of(state("a", TransitionKind.CRASHED)) == "crashed"


def test_a_long_cause_is_cut_in_the_history_table_and_shown_whole_below_it() -> None:
    cause = "PermissionDenied: " + "the app lacks the Exchange role that adds members to the group; " * 30
    transitions = [
        Transition(
            request_id="hr-1",
            stage=StageName.CREATE_CONTACT,
            decision=TransitionKind.PASSED_ON,
            attempt=1,
            cause="to add-member",
            at=T0,
        ),
        Transition(
            request_id="hr-1",
            stage=StageName.ADD_MEMBER,
            decision=TransitionKind.DEAD_LETTERED,
            attempt=1,
            cause=cause,
            outcome_status=OutcomeStatus.FAILED,
            at=T0 + timedelta(seconds=3),
        ),
    ]

    text = text_of(render_history(transitions, request_id="hr-1"), width=80)

    assert max(len(line) for line in text.splitlines()) <= 80
    table, below = text.split("Causes in full")
    assert len([line for line in table.splitlines() if line.strip()]) == 5  # title, header, rule, 2 rows: no wrap
    (row,) = [line for line in table.splitlines() if "dead-lettered" in line]
    assert "PermissionDenied" in row and row.rstrip().endswith("…")
    assert "to add-member" in table and "to add-member" not in below  # what fits is not repeated
    assert " ".join(below.split()).endswith(" ".join(cause.split()))  # the whole cause, wrapped at words
    assert "Causes in full" not in text_of(render_history(transitions[:1], request_id="hr-1"), width=80)


def test_the_summary_cuts_each_cause_to_one_line_and_says_where_the_whole_one_is() -> None:
    states = [
        state("hr-1", TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED, cause="PermissionDenied: " + "x" * 1900)
    ]

    text = text_of(render_summary(states, tally_of(states)), width=80)

    why = text[text.index("Why they stopped or wait") :].splitlines()
    assert why[1].startswith("hr-1: PermissionDenied: xxx") and why[1].endswith("…") and len(why[1]) == 80
    assert "`onboard status REQUEST_ID` shows a cause whole" in why[2]


async def test_status_report_reads_the_journal_and_closes_it() -> None:
    journal = SqliteJournal(":memory:")
    await journal.record(
        Transition(
            request_id="hr-1", stage=StageName.CREATE_CONTACT, decision=TransitionKind.PASSED_ON, attempt=1, at=T0
        )
    )

    summary = text_of(await status_report(journal, limit=5, now=T0 + timedelta(hours=1)))

    assert "hr-1" in summary and "passed-on" in summary
    assert "By state: the 1 request whose latest transition is in the last 24h" in summary
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await journal.summary()
    empty = SqliteJournal(":memory:")
    assert "No transitions recorded for request hr-1." in text_of(await status_report(empty, "hr-1"))
    assert "holds no requests" in text_of(await status_report(SqliteJournal(":memory:")))


async def test_the_summary_says_when_no_request_moved_in_the_window_and_still_lists_the_latest() -> None:
    journal = SqliteJournal(":memory:")
    await journal.record(
        Transition(
            request_id="hr-1", stage=StageName.CREATE_CONTACT, decision=TransitionKind.PASSED_ON, attempt=1, at=T0
        )
    )

    text = text_of(await status_report(journal, since=timedelta(minutes=30), now=T0 + timedelta(hours=1)))

    assert "No request moved in the last 30m (--since widens it)." in text
    assert "The latest 1 request, newest first" in text and "hr-1" in text


# --- the counts both journals give `onboard status` and `--watch` ---------------------------------

NOW = T0 + timedelta(hours=1)
SINCE = NOW - timedelta(hours=24)
IN_WINDOW = 1_200  # far more than the 500 latest requests `--watch` used to count
PERMISSION_DENIED = "PermissionDenied: the app lacks the Exchange role that adds members to the group"


def bulk_run() -> list[Transition]:
    """A bulk run of 1,200 requests in the window, a quarter each succeeded, planned (dry run),
    dead-lettered and waiting for a retry; 20 older requests that left the window; 10 that started
    before it and moved within it; one exactly at its start."""

    def at(request_id: str, seconds_ago: float, stage: StageName, kind: TransitionKind, **more: object) -> Transition:
        fields = {"request_id": request_id, "stage": stage, "decision": kind, "attempt": 1}
        return Transition.model_validate(fields | more | {"at": NOW - timedelta(seconds=seconds_ago)})

    transitions: list[Transition] = []
    for n in range(IN_WINDOW):
        rid, ago = f"bulk-{n:04d}", 60 + n  # bulk-0000 is the newest
        match n % 4:
            case 0:
                transitions.append(at(rid, ago + 30, StageName.CREATE_CONTACT, TransitionKind.PASSED_ON))
                finished = {"outcome_status": OutcomeStatus.SUCCEEDED, "cause": "Succeeded"}
                transitions.append(at(rid, ago, StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, **finished))
            case 1:
                planned = {"outcome_status": OutcomeStatus.PLANNED, "cause": "Planned"}
                transitions.append(at(rid, ago, StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, **planned))
            case 2:
                transitions.append(at(rid, ago + 30, StageName.CREATE_CONTACT, TransitionKind.PASSED_ON))
                failed = {"outcome_status": OutcomeStatus.FAILED, "cause": f"{PERMISSION_DENIED} ({rid})"}
                transitions.append(at(rid, ago, StageName.ADD_MEMBER, TransitionKind.DEAD_LETTERED, **failed))
            case _:
                transitions.append(at(rid, ago, StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED, cause="429"))
    day = 24 * 3600
    for n in range(20):  # their latest transition is before the window: not counted
        transitions.append(at(f"old-{n}", day + 3600 + n, StageName.ADD_MEMBER, TransitionKind.DEAD_LETTERED))
    for n in range(10):  # began two days ago, retried an hour ago: counted where they are now
        transitions.append(at(f"back-{n}", 2 * day, StageName.CREATE_CONTACT, TransitionKind.PASSED_ON))
        transitions.append(at(f"back-{n}", 3600 + n, StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED))
    transitions.append(at("edge", day, StageName.CREATE_CONTACT, TransitionKind.PASSED_ON))  # at SINCE exactly
    return transitions


async def record_all(journal: Journal, transitions: list[Transition]) -> None:
    for start in range(0, len(transitions), 100):  # a hundred writes at a time (Azurite takes one per call)
        await asyncio.gather(*(journal.record(t) for t in transitions[start : start + 100]))


async def test_the_tally_counts_every_request_of_the_window_exactly_however_many(journal: Journal) -> None:
    await record_all(journal, bulk_run())

    tally = await journal.tally(SINCE)

    quarter = IN_WINDOW // 4
    assert dict(tally.counts) == {
        Where(StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED): quarter,
        Where(StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, OutcomeStatus.PLANNED): quarter,
        Where(StageName.ADD_MEMBER, TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED): quarter,
        Where(StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED, None): quarter + 10,
        Where(StageName.CREATE_CONTACT, TransitionKind.PASSED_ON, None): 1,
    }
    assert tally.total == IN_WINDOW + 11 and tally.since == SINCE
    # The latest failures: only five, newest first, each whole (its cause is read for it alone).
    newest = ["bulk-0002", "bulk-0006", "bulk-0010", "bulk-0014", "bulk-0018"]
    assert [f.request_id for f in tally.latest_failures] == newest
    assert tally.latest_failures[0].cause == f"{PERMISSION_DENIED} (bulk-0002)"
    assert tally.latest_failures[0].at == NOW - timedelta(seconds=62)
    assert (await journal.tally(SINCE, failures=0)).latest_failures == []
    assert [f.request_id for f in (await journal.tally(SINCE, failures=2)).latest_failures] == newest[:2]
    later = await journal.tally(NOW - timedelta(seconds=70))  # bulk-0000 .. bulk-0010 moved since then
    assert later.total == 11 and sum(n for w, n in later.counts.items() if w.decision is TransitionKind.FINISHED) == 6


async def test_the_tally_of_an_empty_journal_is_empty_and_wants_an_aware_time(journal: Journal) -> None:
    assert (await journal.tally(SINCE)) == Tally(SINCE, {}, [])
    with pytest.raises(ValueError, match="timezone-aware"):
        await journal.tally(datetime(2026, 11, 23, 9, 0))  # naive on purpose


async def test_table_storage_counts_one_partition_after_another_and_refuses_them_out_of_order() -> None:
    async def scan(*keys: tuple[str, str]) -> AsyncIterator[dict[str, str]]:
        for partition, row in keys:
            yield {"PartitionKey": partition, "RowKey": row}

    latest = [
        (e["RowKey"], n) async for e, n in _latest_per_partition(scan(("a", "1"), ("a", "3"), ("a", "2"), ("b", "1")))
    ]
    assert latest == [("3", 3), ("1", 1)]
    # Keys in UTF-16 order, as the service compares them: a character beyond U+FFFF before U+FFFD.
    assert len([e async for e in _latest_per_partition(scan(("\U0001f600", "1"), ("\ufffd", "1")))]) == 2
    with pytest.raises(UnsortedResultsError):
        [e async for e in _latest_per_partition(scan(("b", "1"), ("a", "1")))]

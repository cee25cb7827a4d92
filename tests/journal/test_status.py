"""What `onboard status` prints, rendered to plain text."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console, RenderableType

from cli.status import render_history, render_summary, state_of, status_report
from shared.contracts import OutcomeStatus, StageName
from shared.journal import RequestState, SqliteJournal, Transition, TransitionKind

T0 = datetime(2026, 11, 23, 9, 0, 0, 250000, tzinfo=UTC)


def text_of(renderable: RenderableType) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(renderable)
    return console.export_text()


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

    text = text_of(render_summary(states))

    by_state = text[: text.index("Latest transition per request")]
    counts = dict(cells(line) for line in by_state.splitlines() if re.fullmatch(r"\s+\S.*\S\s{2,}\d+\s*", line))
    assert counts == {
        "finished (Succeeded)": "2",
        "finished (SucceededWithWarnings)": "1",
        "dead-lettered": "1",
        "retry-scheduled": "1",
    }
    rows = [line for line in text.splitlines() if "hr-" in line]
    assert [cells(row)[0] for row in rows] == ["hr-1", "hr-2", "hr-3", "hr-4", "hr-5"]
    assert cells(rows[0])[4] == "3"


def test_summary_says_why_a_request_failed_waits_or_warned_and_not_why_it_succeeded() -> None:
    states = [
        state("hr-1", TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED, cause="Succeeded"),
        state("hr-2", TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED, cause="GroupNotFound: no such group"),
        state("hr-3", TransitionKind.RETRY_SCHEDULED, cause="Throttled: 429 from Graph"),
        state("hr-4", TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS, cause="delivery unconfirmed"),
    ]

    text = text_of(render_summary(states))

    why = text[text.index("Why they stopped or wait") :]
    assert "hr-2: GroupNotFound: no such group" in why
    assert "hr-3: Throttled: 429 from Graph" in why
    assert "hr-4: delivery unconfirmed" in why
    assert "hr-1" not in why


def test_state_names_the_outcome_only_for_finished_requests() -> None:
    assert state_of(state("a", TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED)) == "dead-lettered"
    assert state_of(state("a", TransitionKind.CRASHED)) == "crashed"


async def test_status_report_reads_the_journal_and_closes_it() -> None:
    journal = SqliteJournal(":memory:")
    await journal.record(
        Transition(
            request_id="hr-1", stage=StageName.CREATE_CONTACT, decision=TransitionKind.PASSED_ON, attempt=1, at=T0
        )
    )

    summary = text_of(await status_report(journal, limit=5))

    assert "hr-1" in summary and "passed-on" in summary
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await journal.summary()
    empty = SqliteJournal(":memory:")
    assert "No transitions recorded for request hr-1." in text_of(await status_report(empty, "hr-1"))
    assert "holds no requests" in text_of(await status_report(SqliteJournal(":memory:")))

"""Tables never cut what a person copies into the next command (a request id, a reason name), at 80
columns as at 140: those columns keep their width and the sentences around them wrap (cli/tables.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console, RenderableType

from cli.dlq import DeadLetterView, Done, render_done, render_list
from cli.status import render_summary
from shared.contracts import OutcomeStatus, StageName
from shared.journal import RequestState, TransitionKind
from shared.journal.ports import Tally, Where

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BULK_ID = "bulk-1c7cbb917c3163f26ac75f511585e894"  # as `onboard bulk` makes them: the common long one
REASONS = ("MaxDeliveryCountExceeded", "UnsupportedGroupKind")


def rendered(renderable: RenderableType, width: int) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False)
    console.print(renderable)
    return console.export_text().splitlines()


def view(request_id: str, reason: str, sequence_number: int) -> DeadLetterView:
    return DeadLetterView(
        queue=StageName.VERIFY_DELIVERY,
        sequence_number=sequence_number,
        request_id=request_id,
        reason=reason,
        description="Service Bus dead-lettered the message after 10 deliveries: the worker crashed or was "
        "killed on every delivery. Find the request id in the logs, fix the cause, then replay it.",
        attempts=10,
        enqueued_at=NOW - timedelta(hours=3),
        deferred=True,
    )


@pytest.mark.parametrize("width", [80, 140])
def test_dead_letters_keep_their_request_ids_and_reasons_whole(width: int) -> None:
    views = [view(BULK_ID, REASONS[0], 1234), view("hr-2026-0042", REASONS[1], 7)]
    lines = rendered(render_list(views, NOW), width)
    assert max(len(line) for line in lines) <= width
    for request_id, reason in ((BULK_ID, REASONS[0]), ("hr-2026-0042", REASONS[1])):
        assert any(request_id in line and reason in line for line in lines), "\n".join(lines)
    replayed = rendered(
        render_done([Done(views[0], f"replayed as demo-hr/{BULK_ID}/replay-1/verify-delivery/1", True)]), width
    )
    assert any(BULK_ID in line for line in replayed), "\n".join(replayed)


@pytest.mark.parametrize("width", [80, 140])
def test_the_latest_requests_keep_their_ids_whole(width: int) -> None:
    states = [
        RequestState(
            request_id=BULK_ID,
            last_stage=StageName.VERIFY_DELIVERY,
            last_decision=TransitionKind.FINISHED,
            last_outcome_status=OutcomeStatus.SUCCEEDED_WITH_WARNINGS,
            last_at=NOW,
            attempts=3,
            last_cause="SucceededWithWarnings",
        ),
        RequestState(
            request_id="hr-2026-0042",
            last_stage=StageName.CREATE_CONTACT,
            last_decision=TransitionKind.DEAD_LETTERED,
            last_at=NOW,
            attempts=1,
            last_cause="UnsupportedGroupKind: the group is a security group without mail",
        ),
    ]
    tally = Tally(NOW - timedelta(hours=24), {Where(StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, None): 2}, [])
    lines = rendered(render_summary(states, tally), width)
    assert max(len(line) for line in lines) <= width
    table = lines[lines.index(next(line for line in lines if line.startswith("Request"))) :]
    assert any(line.split()[:2] == [BULK_ID, "finished"] for line in table), "\n".join(lines)
    assert "(SucceededWithWarnings)" in " ".join(table) and "…" not in " ".join(table)

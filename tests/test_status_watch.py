"""`onboard status --watch`: requests per stage and state, queue depths and the latest failures, at
80 columns, from the journal the app writes and the emulator's queues."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from cli.status import QueueDepth, render_board
from shared.contracts import OutcomeStatus, StageName
from shared.journal import RequestState, TransitionKind
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack
from tests.fixtures.pipeline import onboard
from tests.samples import PARTNERS, sample_request

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def rendered(renderable: object) -> str:
    console = Console(width=80, record=True)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


def state(request_id: str, stage: StageName, kind: TransitionKind, **more: object) -> RequestState:
    fields: dict[str, object] = {
        "request_id": request_id,
        "last_stage": stage,
        "last_decision": kind,
        "last_at": NOW - timedelta(minutes=1),
        "attempts": 1,
    }
    return RequestState.model_validate(fields | more)


def test_the_board_counts_per_stage_and_lists_the_latest_failures_in_80_columns() -> None:
    states = [
        state("r-1", StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, last_outcome_status=OutcomeStatus.SUCCEEDED),
        state("r-2", StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED, last_cause="Throttled (429)"),
        state("r-3", StageName.ADD_MEMBER, TransitionKind.DEAD_LETTERED, last_cause="PermissionDenied: " + "x" * 200),
    ]
    depths = {stage: QueueDepth(waiting=3, dead_letters=0, cap=500) for stage in StageName}
    depths[StageName.CREATE_CONTACT] = QueueDepth(waiting=500, dead_letters=1, cap=500)
    text = rendered(render_board(states, depths, NOW))
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = {
        line.split()[0]: line.split()[1:]
        for line in text.splitlines()
        if line.strip().startswith(("create", "add", "verify"))
    }
    assert rows["create-contact"] == ["500+", "1"]
    assert rows["add-member"] == ["3", "1", "1", "0"]  # waiting, retrying, dead, DLQ (empty cells skipped)
    assert rows["verify-delivery"] == ["3", "1", "0"]
    assert "r-3: PermissionDenied" in text and "r-2:" not in text.split("Latest failures")[1]
    assert "Queue depths need" not in text
    assert "Queue depths need ServiceBusConnection" in rendered(render_board(states, None, NOW))


@pytest.mark.stack
def test_watch_off_a_terminal_prints_one_snapshot_of_the_real_pipeline(stack: LocalStack) -> None:
    stack.sandbox.inject("exchange", 403, operation="Add-DistributionGroupMember")
    requests = [sample_request(f"watch-{n}", f"w{n}@fabrikam.example", f"W {n}", PARTNERS) for n in range(2)]
    outcomes = asyncio.run(onboard(stack, requests))
    assert sorted(o.status for o in outcomes.values()) == [OutcomeStatus.FAILED, OutcomeStatus.SUCCEEDED]

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
    refused = CliRunner().invoke(app, ["status", "watch-0", "--watch"], env=env)
    assert refused.exit_code == 2 and "leave out REQUEST_ID" in refused.output

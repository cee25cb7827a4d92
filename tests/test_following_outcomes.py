"""`--wait` (submit and bulk) follows this send's outcomes, never an earlier run's of the same id.

An outcome's MessageId is `<request id>/outcome` in every run, and outcomes stay on their queue
(`--wait` only peeks), so a file sent again after the duplicate-detection window finds the first
run's outcomes waiting there. Through the real SDK against the emulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from cli.upstream import mark_outcomes, wait_for_outcomes
from shared.contracts import OutcomeEvent, OutcomeStatus, StageName
from shared.envelope import outcome_message_id
from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator
from tests.waiting import HANG_GUARD_SECONDS, NEVER_SECONDS

OUTCOMES = "onboarding-outcomes"


def outcome(request_id: str, status: OutcomeStatus, accepted_at: datetime) -> ServiceBusMessage:
    event = OutcomeEvent(
        request_id=request_id,
        source_system="demo-hr",
        status=status,
        description="",
        stage=StageName.VERIFY_DELIVERY,
        accepted_at=accepted_at,
        finished_at=accepted_at,
    )
    return ServiceBusMessage(event.model_dump_json(), message_id=outcome_message_id(request_id, source="demo-hr"))


async def test_an_earlier_runs_outcome_is_not_this_sends_and_a_recent_one_means_it_was_dropped(
    start_emulator: Callable[[EmulatorConfig], ServiceBusEmulator],
) -> None:
    # Runs minutes apart, in seconds: without duplicate detection the second outcome is kept.
    emulator = start_emulator(EmulatorConfig.default().with_overrides(requires_duplicate_detection=False))
    now = datetime.now(UTC)
    ids = {"old-run": "demo-hr", "recent-run": "demo-hr"}  # request id -> its source
    async with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        async with client.get_queue_sender(OUTCOMES) as sender:
            # Outcomes on the queue before the send: a run 20 minutes ago, and one inside the window.
            await sender.send_messages(outcome("old-run", OutcomeStatus.FAILED, now - timedelta(minutes=20)))
            await sender.send_messages(outcome("recent-run", OutcomeStatus.SUCCEEDED, now - timedelta(minutes=2)))
        mark = await mark_outcomes(client, OUTCOMES, ids)
        assert set(mark.earlier) == set(ids)
        followed = await wait_for_outcomes(client, OUTCOMES, ids, mark=mark, within_seconds=1.5, poll_seconds=0.2)
        assert followed.outcomes == {}, "an earlier run's outcome is never reported as this send's"
        assert list(followed.duplicates) == ["recent-run"]

        async with client.get_queue_sender(OUTCOMES) as sender:  # the new run of old-run ends
            await sender.send_messages(outcome("old-run", OutcomeStatus.SUCCEEDED, now))
        # It returns once every request is accounted for, long before its own (hour-long) time is up.
        following = wait_for_outcomes(client, OUTCOMES, ids, mark=mark, within_seconds=NEVER_SECONDS)
        followed = await asyncio.wait_for(following, HANG_GUARD_SECONDS)
    assert {k: v.status for k, v in followed.outcomes.items()} == {"old-run": OutcomeStatus.SUCCEEDED}
    assert list(followed.duplicates) == ["recent-run"]

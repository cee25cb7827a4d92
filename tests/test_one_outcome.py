"""Exactly one outcome for every message put on create-contact, whatever upstream sends and whatever fails.

Through the real azure-servicebus SDK, the emulator, the tenant sandbox and the local host. The
outcome queue here keeps every message sent to it (no duplicate detection), so a second outcome
is counted even when it carries the first one's MessageId.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusMessageState, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from typer.testing import CliRunner

from cli.main import app
from cli.upstream import collect_outcomes
from functions.triggers import DEAD_LETTER_SWEEP_FUNCTION
from shared.contracts import DeadLetterReason, OutcomeEvent, OutcomeStatus, StageName
from shared.settings import SERVICEBUS_CONNECTION
from shared.startup import AppCannotStart
from standins.servicebus_emulator import EmulatorConfig
from standins.stack import LocalStack, local_stack, running_host
from tests.fixtures.pipeline import OUTCOMES, journal_history, keeping_every_outcome
from tests.samples import PARTNERS, sample_request, sample_request_json
from tools.demo import DEMO_POLICY

pytestmark = pytest.mark.stack  # every test here starts stand-ins


async def send(stack: LocalStack, queue: str, *messages: ServiceBusMessage) -> None:
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_sender(queue) as sender,
    ):
        await sender.send_messages(list(messages))


async def all_outcomes(stack: LocalStack, *, settle_seconds: float = 3) -> list[OutcomeEvent]:
    """Every outcome on the outcome queue, waiting until none arrives for `settle_seconds`."""
    found: list[OutcomeEvent] = []
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_receiver(OUTCOMES) as receiver,
    ):
        while batch := await receiver.receive_messages(max_message_count=50, max_wait_time=settle_seconds):
            for message in batch:
                found.append(OutcomeEvent.model_validate_json(b"".join(message.body)))
                await receiver.complete_message(message)
    return found


async def dead_letters(stack: LocalStack, queue: str) -> list[ServiceBusReceivedMessage]:
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq,
    ):
        return list(await dlq.peek_messages(max_message_count=50))


async def run_host_until(
    stack: LocalStack, request_ids: list[str], *, within_seconds: float = 60
) -> list[OutcomeEvent]:
    """Every outcome while the local host runs, until each request has one; the dead-letter sweep runs
    between looks (as its timer would, only sooner), so a repeated sweep shows as a second outcome."""
    async with running_host(stack.environment) as host:
        async with ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client:
            await collect_outcomes(client, OUTCOMES, [], within_seconds=0)  # nothing: just let it start
        deadline = asyncio.get_running_loop().time() + within_seconds
        seen: list[OutcomeEvent] = []
        while {o.request_id for o in seen} < set(request_ids) and asyncio.get_running_loop().time() < deadline:
            await host.run_timer(DEAD_LETTER_SWEEP_FUNCTION)
            seen += await all_outcomes(stack, settle_seconds=1)
        await host.run_timer(DEAD_LETTER_SWEEP_FUNCTION)
        seen += await all_outcomes(stack, settle_seconds=2)  # anything that would be a duplicate
    return seen


async def test_what_service_bus_dead_letters_by_itself_still_ends_with_one_outcome() -> None:
    few_deliveries = keeping_every_outcome(EmulatorConfig.default().with_overrides(max_delivery_count=2))
    with local_stack(emulator_config=few_deliveries) as stack:
        # A worker killed on every delivery: Service Bus dead-letters after MaxDeliveryCount, with no outcome.
        await send(stack, "create-contact", ServiceBusMessage(sample_request_json(request_id="killed-1")))
        async with (
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
            client.get_queue_receiver("create-contact") as receiver,
        ):
            for _ in range(2):
                (message,) = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
                await receiver.abandon_message(message)
        # A request that waited longer than its time to live (the pipeline was down).
        expiring = ServiceBusMessage(sample_request_json(request_id="expired-1"), time_to_live=timedelta(seconds=1))
        await send(stack, "create-contact", expiring)
        await asyncio.sleep(2.5)
        assert {m.dead_letter_reason for m in await dead_letters(stack, "create-contact")} == {
            "MaxDeliveryCountExceeded",
            "TTLExpiredException",
        }
        outcomes = await run_host_until(stack, ["killed-1", "expired-1"])
        # A new process: the sweep's own memory is gone, the journal still knows what was reported.
        outcomes += await run_host_until(stack, [], within_seconds=0)
        kept = await dead_letters(stack, "create-contact")
    by_id = {o.request_id: o for o in outcomes}
    assert len(outcomes) == 2, outcomes
    assert by_id["killed-1"].status is OutcomeStatus.FAILED
    assert by_id["killed-1"].reason is DeadLetterReason.MAX_DELIVERY_COUNT_EXCEEDED
    assert by_id["expired-1"].reason is DeadLetterReason.TTL_EXPIRED
    # They stay for operators, active: a deferred dead letter would still count for (or hide new ones
    # from) the scaler of a trigger on the sub-queue (docs/service-bus-facts.md).
    assert [m.state for m in kept] == [ServiceBusMessageState.ACTIVE] * 2


async def test_a_request_the_pipeline_dead_letters_gets_one_outcome_not_two() -> None:
    with local_stack(emulator_config=keeping_every_outcome()) as stack:
        await send(
            stack,
            "create-contact",
            ServiceBusMessage(
                sample_request("unknown-1", "lee@fabrikam.example", "Lee Chen", "no-such-group@contoso.com")
                .model_dump_json()
                .encode(),
                message_id="unknown-1",
            ),
        )
        outcomes = await run_host_until(stack, ["unknown-1"])
        kept = await dead_letters(stack, "create-contact")
    assert [(o.request_id, o.reason) for o in outcomes] == [("unknown-1", DeadLetterReason.GROUP_NOT_FOUND)]
    assert [(m.dead_letter_reason, m.state) for m in kept] == [("GroupNotFound", ServiceBusMessageState.ACTIVE)]


async def test_resending_a_request_with_a_new_message_id_does_the_work_once() -> None:
    with local_stack(emulator_config=keeping_every_outcome()) as stack:
        body = sample_request("hr-42", "ana@fabrikam.example", "Ana Lind", PARTNERS).model_dump_json().encode()
        await send(stack, "create-contact", ServiceBusMessage(body, message_id="sb-first"))
        await send(stack, "create-contact", ServiceBusMessage(body, message_id="sb-second"))
        outcomes = await run_host_until(stack, ["hr-42"])
        contacts = [
            c for c in stack.sandbox.directory.contacts.values() if c.external_email_address == "ana@fabrikam.example"
        ]
        journal = f"sqlite:{stack.journal_database}"
        status = await asyncio.to_thread(
            CliRunner().invoke, app, ["status", "hr-42", "--journal", journal], env={"COLUMNS": "240"}
        )
        history = await journal_history(stack, "hr-42")
    assert [(o.request_id, o.status) for o in outcomes] == [("hr-42", OutcomeStatus.SUCCEEDED)]
    assert len(contacts) == 1
    # The request id is the identity of every stage's record, and `onboard status <request id>` finds it.
    assert {t.stage for t in history} == set(StageName)
    assert [t.outcome_status for t in history if t.outcome_status] == [OutcomeStatus.SUCCEEDED]
    assert status.exit_code == 0, status.output
    assert all(stage in status.output for stage in StageName) and "sb-first" not in status.output


async def test_hostile_envelopes_each_end_with_one_outcome() -> None:
    with local_stack(emulator_config=keeping_every_outcome()) as stack:
        long_id = "L" * 128  # Service Bus's limit: every id the pipeline derives must still fit
        await send(
            stack,
            "create-contact",
            ServiceBusMessage(sample_request_json(external_email="a@fabrikam.example"), message_id=long_id),
            ServiceBusMessage(
                sample_request_json(external_email="b@fabrikam.example"), message_id="loop-1", reply_to="add-member"
            ),
            ServiceBusMessage(
                sample_request_json(external_email="c@fabrikam.example"), message_id="gone-1", reply_to="no-such-queue"
            ),
            ServiceBusMessage(
                sample_request_json(external_email="d@fabrikam.example"),
                message_id="spoof-1",
                application_properties={"onboarding-request-id": "someone-else", "onboarding-attempt": "999"},
            ),
            ServiceBusMessage(sample_request_json(), message_id="has/slash"),
        )
        outcomes = await run_host_until(stack, [long_id, "loop-1", "gone-1", "spoof-1", "has/slash"], within_seconds=90)
    by_id = {o.request_id: o for o in outcomes}
    assert len(outcomes) == len(by_id) == 5, [o.request_id for o in outcomes]
    assert by_id[long_id].status is OutcomeStatus.SUCCEEDED
    assert by_id["loop-1"].status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS
    assert "pipeline's own queues" in by_id["loop-1"].warnings[0]
    assert by_id["gone-1"].status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS
    assert "'no-such-queue' does not exist" in by_id["gone-1"].warnings[-1]
    assert by_id["spoof-1"].status is OutcomeStatus.SUCCEEDED
    assert (by_id["has/slash"].status, by_id["has/slash"].reason) == (
        OutcomeStatus.FAILED,
        DeadLetterReason.INVALID_REQUEST,
    )


async def test_an_app_that_cannot_start_takes_no_message_and_handles_it_once_fixed(tmp_path: Path) -> None:
    # A broken policy file stops the app at its start, as the Functions worker fails to index it
    # (shared/startup.py): the request waits on its queue, never delivered, instead of crashing on
    # every delivery until Service Bus dead-letters it; with the file fixed, it runs.
    policy = tmp_path / "policy.json"
    policy.write_text('{"sources": ')
    with local_stack(policy_file=policy) as stack:
        await send(stack, "create-contact", ServiceBusMessage(sample_request_json(request_id="broken-1")))
        with pytest.raises(AppCannotStart, match=rf"ONBOARDING_POLICY_FILE={policy}: not a valid policy: Invalid JSON"):
            async with running_host(stack.environment):
                pass
        waiting = await peeked(stack, "create-contact")
        policy.write_text(DEMO_POLICY.read_text())
        outcomes = await run_host_until(stack, ["broken-1"])
    assert [message.delivery_count for message in waiting] == [0]
    assert [(o.request_id, o.status) for o in outcomes] == [("broken-1", OutcomeStatus.SUCCEEDED)]


async def peeked(stack: LocalStack, queue: str) -> list[ServiceBusReceivedMessage]:
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_receiver(queue) as receiver,
    ):
        return list(await receiver.peek_messages(max_message_count=10))

"""`onboard dlq`: dead letters listed, shown, replayed after their cause is fixed, and purged, through the
real SDK, the emulator, the sandbox and the local host."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from rich.console import Console
from typer.testing import CliRunner

from cli.dlq import (
    DeadLetterView,
    Selection,
    confirm_question,
    known_reason,
    list_dead_letters,
    parse_age,
    purge,
    render_list,
    render_other_queues,
    replay,
)
from cli.main import app
from cli.upstream import collect_outcomes, submit
from shared.contracts import DeadLetterReason, OutcomeStatus, StageName
from shared.queues import DRIFT_QUEUE, LEASE_QUEUE
from shared.settings import SERVICEBUS_CONNECTION
from standins.servicebus_emulator import ServiceBusEmulator
from standins.stack import LocalStack, running_host
from tests.fixtures.pipeline import OUTCOMES
from tests.samples import PARTNERS, sample_request

pytestmark = pytest.mark.stack


async def _dead_lettered(client: ServiceBusClient, queue: StageName, count: int) -> list[DeadLetterView]:
    """The dead letters of `queue` once there are `count`: the pipeline publishes the outcome first."""
    async with asyncio.timeout(20):
        while True:
            views = await list_dead_letters(client, [queue])
            if len(views) >= count:
                return views
            await asyncio.sleep(0.2)


async def test_a_dead_letter_replayed_after_its_cause_is_fixed_succeeds_with_one_contact(stack: LocalStack) -> None:
    email = "riley.moss@fabrikam.example"
    stack.sandbox.inject("exchange", 403, operation="Add-DistributionGroupMember")  # the app lacks a role, once
    async with (
        running_host(stack.environment),
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
    ):
        (request_id,) = await submit(client, [sample_request("dlq-replay-1", email, "Riley Moss", PARTNERS)])
        first = await collect_outcomes(client, OUTCOMES, [request_id], within_seconds=30)
        assert first[request_id].reason is DeadLetterReason.PERMISSION_DENIED

        (view,) = await _dead_lettered(client, StageName.ADD_MEMBER, 1)
        assert (view.request_id, view.reason, view.deferred) == (request_id, "PermissionDenied", False)
        text = _rendered(render_list([view], datetime.now(UTC)))
        assert all(len(line) <= 80 for line in text.splitlines())
        assert "add-member/$deadletterqueue: 1" in text
        assert "PermissionDenied" in text and email not in text

        # The role is granted (the scripted refusal is used up); the operator replays.
        (done,) = await replay(client, StageName.ADD_MEMBER, [view], datetime.now(UTC))
        assert done.ok and done.result == f"replayed as demo-hr/{request_id}/replay-1/add-member/1"
        second = await collect_outcomes(client, OUTCOMES, [request_id], within_seconds=30)
        assert second[request_id].status is OutcomeStatus.SUCCEEDED
        assert await list_dead_letters(client, [StageName.ADD_MEMBER]) == []  # replayed means gone

    contacts = [c for c in stack.sandbox.directory.contacts.values() if c.external_email_address.endswith(email)]
    assert len(contacts) == 1


async def test_active_dead_letters_are_selected_by_reason_and_purged(stack: LocalStack) -> None:
    """Without the host running nothing is deferred: replay and purge must receive active dead letters."""
    async with ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client:
        async with client.get_queue_sender("verify-delivery") as sender:
            await sender.send_messages([ServiceBusMessage(b"{}", message_id=f"dl-{n}") for n in range(3)])
        async with client.get_queue_receiver("verify-delivery") as receiver:
            received: list[ServiceBusReceivedMessage] = []
            while len(received) < 3:
                received += await receiver.receive_messages(max_message_count=3, max_wait_time=5)
            for n, message in enumerate(sorted(received, key=lambda m: m.sequence_number or 0)):
                reason = "PolicyDenied" if n < 2 else "Other"
                await receiver.dead_letter_message(message, reason=reason, error_description="a.b@example.com said no")

        views = await list_dead_letters(client, [StageName.VERIFY_DELIVERY])
        assert [(v.reason, v.deferred) for v in views] == [("PolicyDenied", False)] * 2 + [("Other", False)]
        assert all("a***@example.com" in v.description for v in views)
        now = datetime.now(UTC)
        chosen = [v for v in views if Selection(reason="policydenied").matches(v, now)]
        assert len(chosen) == 2
        assert not [v for v in views if Selection(older_than=timedelta(hours=1)).matches(v, now)]

        # A stage message that is not valid JSON cannot be replayed: it stays, with the reason.
        (refused, _) = await replay(client, StageName.VERIFY_DELIVERY, chosen, now)
        assert not refused.ok and "not replayed" in refused.result

        purged = await purge(client, StageName.VERIFY_DELIVERY, chosen)
        assert [d.ok for d in purged] == [True, True]
        assert [v.reason for v in await list_dead_letters(client, [StageName.VERIFY_DELIVERY])] == ["Other"]
        gone = await purge(client, StageName.VERIFY_DELIVERY, chosen)  # listed, then purged by someone else
        assert [d.result for d in gone] == ["gone: no longer in the dead-letter queue"] * 2
        async with client.get_queue_receiver("verify-delivery", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            assert len(await dlq.peek_messages(max_message_count=10)) == 1


def test_ages_read_as_operators_write_them() -> None:
    assert [parse_age(t) for t in ("90s", "30m", "2h", "7d")] == [
        timedelta(seconds=90),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(days=7),
    ]
    for bad in ("", "h", "2w", "-1h", "1.5h"):
        with pytest.raises(ValueError, match="is not an age"):
            parse_age(bad)
    with pytest.raises(ValueError, match="longer than 3650 days"):
        parse_age("1000000d")  # a date that far back does not exist


def test_the_question_before_acting_counts_in_words() -> None:
    assert confirm_question("purge", 1) == "Purge this dead letter?"
    assert confirm_question("purge", 3) == "Purge these 3 dead letters?"
    assert confirm_question("replay", 2) == "Replay these 2 dead letters?"


def _rendered(renderable: object) -> str:
    console = Console(width=80, record=True, file=None)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


def test_the_commands_list_ask_before_purging_and_refuse_an_empty_selection(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    env = {SERVICEBUS_CONNECTION: servicebus_emulator.connection_string, "COLUMNS": "80"}

    async def dead_letter_one() -> None:
        async with ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client:
            async with client.get_queue_sender("add-member") as sender:
                await sender.send_messages(ServiceBusMessage(b"{}", message_id="cli-1"))
            async with client.get_queue_receiver("add-member") as receiver:
                (message,) = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
                await receiver.dead_letter_message(message, reason="RetriesExhausted", error_description="x")

    asyncio.run(dead_letter_one())
    listed = CliRunner().invoke(app, ["dlq", "list", "--queue", "add-member"], env=env)
    assert listed.exit_code == 0 and "cli-1" in listed.output and "RetriesExhausted" in listed.output
    assert "No dead letters." in CliRunner().invoke(app, ["dlq", "list", "-q", "verify-delivery"], env=env).output

    nothing = CliRunner().invoke(app, ["dlq", "replay"], env=env)
    assert nothing.exit_code == 2 and "Say which dead letters" in nothing.output
    no_match = CliRunner().invoke(app, ["dlq", "purge", "--reason", "PolicyDenied", "--yes"], env=env)
    assert no_match.exit_code == 1 and "No dead letter matches" in no_match.output

    declined = CliRunner().invoke(app, ["dlq", "purge", "--all"], env=env, input="n\n")
    assert declined.exit_code == 1 and "Nothing done." in declined.output
    assert "Purge this dead letter? [y/N]" in declined.output
    assert "cli-1" in CliRunner().invoke(app, ["dlq", "list"], env=env).output
    purged = CliRunner().invoke(app, ["dlq", "purge", "--all", "--yes"], env=env)
    assert purged.exit_code == 0 and "purged" in purged.output
    assert "No dead letters." in CliRunner().invoke(app, ["dlq", "list"], env=env).output


def test_the_list_counts_the_other_queues_dead_letters_and_says_what_they_mean(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    """Drift work and lease wake-ups carry no request: counted, explained, never listed as a stage's."""
    env = {SERVICEBUS_CONNECTION: servicebus_emulator.connection_string, "COLUMNS": "200"}

    async def dead_letter(queue: str, count: int) -> None:
        async with ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client:
            async with client.get_queue_sender(queue) as sender:
                await sender.send_messages([ServiceBusMessage(b"{}", message_id=f"{queue}-{n}") for n in range(count)])
            async with client.get_queue_receiver(queue) as receiver:
                received: list[ServiceBusReceivedMessage] = []
                while len(received) < count:
                    received += await receiver.receive_messages(max_message_count=count, max_wait_time=5)
                for message in received:
                    await receiver.dead_letter_message(message, reason="MaxDeliveryCountExceeded")

    quiet = CliRunner().invoke(app, ["dlq", "list"], env=env)
    assert quiet.exit_code == 0 and "Other queues" not in quiet.output  # nothing there: nothing said

    asyncio.run(dead_letter(DRIFT_QUEUE, 2))
    asyncio.run(dead_letter(LEASE_QUEUE, 1))
    listed = CliRunner().invoke(app, ["dlq", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "No dead letters." in listed.output  # the stage queues have none
    assert "drift/$deadletterqueue: 2: drift work that failed every delivery" in listed.output
    assert "leases/$deadletterqueue: 1: lease wake-ups" in listed.output
    assert "doctor/$deadletterqueue" not in listed.output
    chosen = CliRunner().invoke(app, ["dlq", "list", "--queue", "add-member"], env=env)
    assert "drift" not in chosen.output  # a chosen stage queue is all that is asked for


def test_a_queue_the_list_cannot_read_is_named_as_not_read() -> None:
    """An operator without a right on a queue (or a namespace without it) sees which, not a traceback."""
    counts: dict[str, int | str] = {DRIFT_QUEUE: 0, LEASE_QUEUE: "not read (ServiceBusAuthorizationError)"}
    text = _rendered(render_other_queues(counts))
    assert "leases/$deadletterqueue: not read (ServiceBusAuthorizationError)" in text and "drift" not in text
    assert render_other_queues({DRIFT_QUEUE: 0, LEASE_QUEUE: 0}) is None


def test_a_reason_the_app_does_not_know_is_refused_naming_the_closest_one() -> None:
    """Before, `--reason PolicyDenid` matched nothing and said only that nothing matched."""
    env = {"COLUMNS": "400"}
    typo = CliRunner().invoke(app, ["dlq", "replay", "--reason", "PolicyDenid"], env=env)
    assert typo.exit_code == 2
    assert typo.output.startswith(
        "--reason PolicyDenid is not a dead-letter reason of this app: did you mean PolicyDenied?"
    )
    assert "MaxDeliveryCountExceeded" in typo.output and "by its sequence number" in typo.output
    assert known_reason("policydenied") == "PolicyDenied"  # any case, as the listing's matching

"""Leases end to end (docs/leases.md): the real SDK, the emulator, the tenant sandbox and the local host
running function_app.py, with leases of seconds and a notice a few seconds before the end.

Nothing here times the app: each test waits for what it expects to arrive (an outcome, a notice, the
old wake-up consumed) and checks what arrived and in which order.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus.aio import ServiceBusClient
from typer.testing import CliRunner

from cli.main import app
from cli.upstream import submit
from shared.contracts import LeaseNotice, OnboardingRequest, OutcomeEvent, OutcomeStatus
from shared.journal import SqliteJournal
from shared.journal.model import Lease, LeaseState
from shared.lease_watch import CATCH_UP_AFTER, LeaseWatch
from shared.leases import NOTICE_SUBJECT, NOTICE_TYPE, expiry_request_id, lease_key
from shared.outbox import QueueSenders, peeked
from shared.policy import OnboardingPolicy
from shared.queues import LEASE_QUEUE
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack, local_stack, running_host
from tests.fixtures.pipeline import OUTCOMES, Readback
from tests.samples import PARTNERS, sample_request
from tests.waiting import HANG_GUARD_SECONDS
from tools.demo import DEMO_POLICY

pytestmark = pytest.mark.stack

PERSON = "lena.fischer@fabrikam.example"
NOTICE_SECONDS = 10  # ONBOARDING_LEASE_NOTICE_SECONDS here: the notice comes this long before the end


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    with local_stack(settings={"ONBOARDING_LEASE_NOTICE_SECONDS": str(NOTICE_SECONDS)}) as running:
        yield running


def _leased(request_id: str, ends_at: datetime | None) -> OnboardingRequest:
    request = sample_request(request_id, PERSON, "Lena Fischer", PARTNERS)
    return request.model_copy(update={"expires_at": ends_at})


async def _lease(stack: LocalStack, key: str) -> Lease | None:
    journal = SqliteJournal(str(stack.journal_database))
    try:
        return await journal.lease(key)
    finally:
        await journal.close()


class OutcomeQueue:
    """What arrives on the outcome queue, in order: outcome events and lease notices, told apart by subject."""

    def __init__(self, client: ServiceBusClient) -> None:
        self.client = client
        self.arrived: list[OutcomeEvent | LeaseNotice] = []

    async def until(self, request_id: str) -> OutcomeEvent:
        """Receive until the outcome of `request_id` has arrived; return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG_GUARD_SECONDS
        async with self.client.get_queue_receiver(OUTCOMES) as receiver:
            while loop.time() < deadline:
                for message in await receiver.receive_messages(max_message_count=20, max_wait_time=2):
                    body = b"".join(message.body)
                    if message.subject == NOTICE_SUBJECT:
                        event = json.loads(body)
                        assert event["type"] == NOTICE_TYPE and message.content_type == "application/cloudevents+json"
                        self.arrived.append(LeaseNotice.model_validate(event["data"]))
                    else:
                        self.arrived.append(OutcomeEvent.model_validate_json(body))
                    await receiver.complete_message(message)
                done = [a for a in self.arrived if isinstance(a, OutcomeEvent) and a.request_id == request_id]
                if done:
                    return done[0]
        raise AssertionError(f"no outcome for {request_id} within {HANG_GUARD_SECONDS:.0f} s")

    def notices(self) -> list[LeaseNotice]:
        return [a for a in self.arrived if isinstance(a, LeaseNotice)]


async def _wake_ups_left(client: ServiceBusClient, ends_at: datetime) -> int:
    """Wake-ups still on the leases queue (scheduled ones are peeked too) for the end `ends_at`."""
    count = 0
    async with client.get_queue_receiver(LEASE_QUEUE) as receiver:
        async for message in peeked(receiver):
            wake = json.loads(b"".join(message.body))
            count += datetime.fromisoformat(wake["ends_at"]) == ends_at
    return count


async def test_a_lease_survives_a_host_restart_gives_notice_then_ends_the_membership(
    stack: LocalStack, readback: Readback
) -> None:
    ends_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=NOTICE_SECONDS + 15)
    async with ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client:
        queue = OutcomeQueue(client)
        async with running_host(stack.environment):
            await submit(client, [_leased("lease-e2e-1", ends_at)])
            onboarded = await queue.until("lease-e2e-1")
        # The host is gone between scheduling and the end: the wake-ups wait in Service Bus.
        assert onboarded.status is OutcomeStatus.SUCCEEDED, onboarded
        assert onboarded.expires_at == ends_at
        assert onboarded.group is not None
        key = lease_key(PERSON, onboarded.group.id)
        lease = await _lease(stack, key)
        assert lease is not None and lease.state is LeaseState.ACTIVE and lease.ends_at == ends_at
        assert await _wake_ups_left(client, ends_at) == 2  # the notice and the end
        async with running_host(stack.environment):
            offboarded = await queue.until(expiry_request_id(key, ends_at))
    (notice,) = queue.notices()
    assert notice.lease_id == key and notice.ends_at == ends_at and notice.request_id == "lease-e2e-1"
    assert queue.arrived.index(notice) < queue.arrived.index(offboarded)  # the notice came first
    assert offboarded.status in (OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS), offboarded
    members = await readback.exchange.list_distribution_group_members(PARTNERS)
    assert PERSON not in {(m.email_address or "").lower() for m in members}
    expired = await _lease(stack, key)
    assert expired is not None and expired.state is LeaseState.EXPIRED


async def _lose_wake_ups(client: ServiceBusClient, expected: int) -> None:
    """Take the lease's wake-ups off the queue unread, as Service Bus does when it dead-letters one whose
    deliveries all failed (or an operator purges it): they appear at their time, then they are gone."""
    lost = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD_SECONDS
    async with client.get_queue_receiver(LEASE_QUEUE) as receiver:
        while lost < expected and loop.time() < deadline:
            for message in await receiver.receive_messages(max_message_count=expected, max_wait_time=2):
                await receiver.complete_message(message)
                lost += 1
    assert lost == expected, f"{lost} of {expected} wake-ups appeared"


async def test_a_lease_whose_wake_up_was_lost_is_ended_by_the_timer_sweep(
    stack: LocalStack, readback: Readback
) -> None:
    ends_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=NOTICE_SECONDS + 15)
    connection = stack.environment[SERVICEBUS_CONNECTION]
    async with ServiceBusClient.from_connection_string(connection) as client:
        queue = OutcomeQueue(client)
        async with running_host(stack.environment):
            await submit(client, [_leased("lease-lost-1", ends_at)])
            onboarded = await queue.until("lease-lost-1")
        assert onboarded.group is not None
        key = lease_key(PERSON, onboarded.group.id)
        await _lose_wake_ups(client, 2)  # the notice and the end: the host was down, nothing acted
        still = await _lease(stack, key)
        assert still is not None and still.state is LeaseState.ACTIVE  # past its end, and nothing will end it
        book = SqliteJournal(str(stack.journal_database))
        outbox = QueueSenders(ServiceBusClient.from_connection_string(connection))
        try:
            watch = LeaseWatch(
                book, outbox, OnboardingPolicy.load(DEMO_POLICY), OUTCOMES, lambda: ends_at + CATCH_UP_AFTER * 2
            )
            sent = await watch.catch_up()  # what the timer's sweep does, at a time well past the end
        finally:
            await outbox.close()
            await book.close()
        assert sent == 1
        async with running_host(stack.environment):
            offboarded = await queue.until(expiry_request_id(key, ends_at))
    assert offboarded.status in (OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS), offboarded
    members = await readback.exchange.list_distribution_group_members(PARTNERS)
    assert PERSON not in {(m.email_address or "").lower() for m in members}
    expired = await _lease(stack, key)
    assert expired is not None and expired.state is LeaseState.EXPIRED
    assert queue.notices() == []  # the notice's wake-up was lost too; only the end is caught up


async def test_a_renewal_extends_the_lease_and_the_old_schedule_does_nothing(
    stack: LocalStack, readback: Readback
) -> None:
    first_end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=NOTICE_SECONDS + 20)
    renewed_end = first_end + timedelta(days=30)
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        running_host(stack.environment),
    ):
        queue = OutcomeQueue(client)
        await submit(client, [_leased("lease-e2e-2", first_end)])
        first = await queue.until("lease-e2e-2")
        await submit(client, [_leased("lease-e2e-2-renewed", renewed_end)])
        renewed = await queue.until("lease-e2e-2-renewed")
        assert first.group is not None and renewed.expires_at == renewed_end
        key = lease_key(PERSON, first.group.id)
        lease = await _lease(stack, key)
        assert lease is not None and lease.ends_at == renewed_end and lease.request_id == "lease-e2e-2-renewed"
        # Wait until the first end's wake-ups have come and gone (they stay scheduled until then).
        for _ in range(int(HANG_GUARD_SECONDS)):  # a guard against hanging, not a timing
            if not await _wake_ups_left(client, first_end):
                break
            await asyncio.sleep(1)
        assert await _wake_ups_left(client, first_end) == 0
        assert await _wake_ups_left(client, renewed_end) == 2
    still = await _lease(stack, key)
    assert still is not None and still.state is LeaseState.ACTIVE and still.ends_at == renewed_end
    # The first end's notice may have come while that end still held (a slow onboarding); never after the renewal.
    assert all(queue.arrived.index(notice) < queue.arrived.index(renewed) for notice in queue.notices())
    journal = SqliteJournal(str(stack.journal_database))
    try:
        assert await journal.history(expiry_request_id(key, first_end)) == []  # no offboard was sent
    finally:
        await journal.close()
    members = await readback.exchange.list_distribution_group_members(PARTNERS)
    assert PERSON in {(m.email_address or "").lower() for m in members}


async def test_an_early_offboard_ends_the_lease_and_its_old_schedule_does_nothing(stack: LocalStack) -> None:
    ends_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=NOTICE_SECONDS + 20)
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        running_host(stack.environment),
    ):
        queue = OutcomeQueue(client)
        await submit(client, [_leased("lease-e2e-3", ends_at)])
        onboarded = await queue.until("lease-e2e-3")
        assert onboarded.group is not None
        key = lease_key(PERSON, onboarded.group.id)
        offboard = OnboardingRequest.model_validate(
            {"action": "offboard", "external_email": PERSON, "group": {"smtp_address": PARTNERS}}
            | {"source_system": "demo-hr", "request_id": "lease-e2e-3-leaves"}
        )
        await submit(client, [offboard])
        left = await queue.until("lease-e2e-3-leaves")
        assert left.status is OutcomeStatus.SUCCEEDED, left
        assert any("lease" in change for change in left.changes), left.changes
        ended = await _lease(stack, key)
        assert ended is not None and ended.state is LeaseState.ENDED
        for _ in range(int(HANG_GUARD_SECONDS)):  # a guard against hanging, not a timing
            if not await _wake_ups_left(client, ends_at):
                break
            await asyncio.sleep(1)
        assert await _wake_ups_left(client, ends_at) == 0
    assert all(queue.arrived.index(notice) < queue.arrived.index(left) for notice in queue.notices())
    journal = SqliteJournal(str(stack.journal_database))
    try:
        assert await journal.history(expiry_request_id(key, ends_at)) == []  # the end sent no offboard
    finally:
        await journal.close()
    still = await _lease(stack, key)
    assert still is not None and still.state is LeaseState.ENDED


ADELE = "0b6a9c1e-1111-4a4e-9b1a-5f7c2d3e4a01"  # a member user of the demo tenant


async def test_a_guest_is_invited_with_its_sponsors_and_onboard_leases_lists_its_lease(stack: LocalStack) -> None:
    ends_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=20)
    request = sample_request("lease-e2e-4", "ines.moreau@tailspin.example", "Ines Moreau", "project-falcon@contoso.com")
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        running_host(stack.environment),
    ):
        await submit(client, [request.model_copy(update={"expires_at": ends_at, "sponsors": (uuid.UUID(ADELE),)})])
        outcome = await OutcomeQueue(client).until("lease-e2e-4")
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    assert outcome.recipient is not None and outcome.recipient.created
    assert stack.sandbox.directory.users[outcome.recipient.id].sponsors == [ADELE]

    environment = {"ONBOARDING_JOURNAL": f"sqlite:{stack.journal_database}", "COLUMNS": "200"}
    within = await asyncio.to_thread(CliRunner().invoke, app, ["leases", "--within", "21d"], env=environment)
    assert within.exit_code == 0, within.output
    assert "project-falcon@contoso.com" in within.output and "lease-e2e-4" in within.output
    assert f"{ends_at:%Y-%m-%d %H:%M}" in within.output
    assert "ines.moreau@tailspin.example" not in within.output and "i***@tailspin.example" in within.output
    sooner = await asyncio.to_thread(CliRunner().invoke, app, ["leases", "--within", "7d"], env=environment)
    assert sooner.exit_code == 0 and "No lease ends within 7d." in sooner.output

"""What an upstream system does: put requests on `create-contact`, read outcome events back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from azure.identity.aio import DefaultAzureCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver

from shared.contracts import OnboardingRequest, OutcomeEvent, StageName
from shared.envelope import outcome_message_id
from shared.queues import DUPLICATE_WINDOW
from shared.settings import ServiceBusSettings

# A command line should fail within seconds when the namespace is unreachable, not after the
# SDK's default three retries (about 13 s).
CLIENT_RETRIES = 1
PEEK_BATCH = 100
# How far this machine's clock may be behind Service Bus's enqueue times.
CLOCK_SKEW = timedelta(seconds=30)


def namespace_of(settings: ServiceBusSettings) -> str:
    """Where the client connects (no key): the connection string's Endpoint, or the namespace."""
    if settings.servicebus_connection_string is None:
        return str(settings.servicebus_namespace)
    for part in settings.servicebus_connection_string.get_secret_value().split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "endpoint":
            return value.strip()
    return "the namespace of ServiceBusConnection"


@asynccontextmanager
async def servicebus_client(settings: ServiceBusSettings) -> AsyncIterator[ServiceBusClient]:
    """A client by connection string, or by namespace as the signed-in operator (az login)."""
    if settings.servicebus_connection_string is not None:
        secret = settings.servicebus_connection_string.get_secret_value()
        async with ServiceBusClient.from_connection_string(secret, retry_total=CLIENT_RETRIES) as client:
            yield client
        return
    async with (
        DefaultAzureCredential() as credential,
        ServiceBusClient(str(settings.servicebus_namespace), credential, retry_total=CLIENT_RETRIES) as client,
    ):
        yield client


async def _peek_for(
    receiver: ServiceBusReceiver, message_id: str, from_sequence: int
) -> tuple[ServiceBusReceivedMessage | None, int]:
    """Peek (without locking) from `from_sequence` to the end; the message with this id, and where to go on."""
    while True:
        batch = await receiver.peek_messages(max_message_count=PEEK_BATCH, sequence_number=from_sequence)
        if not batch:
            return None, from_sequence
        for message in batch:
            from_sequence = (message.sequence_number or 0) + 1
            if message.message_id == message_id:
                return message, from_sequence


async def is_queued(client: ServiceBusClient, queue: str, message_id: str) -> bool:
    async with client.get_queue_receiver(queue) as receiver:
        found, _ = await _peek_for(receiver, message_id, 0)
        return found is not None


@dataclass(frozen=True)
class Followed:
    """What following requests to their outcomes found."""

    outcomes: dict[str, OutcomeEvent]  # published since the requests were sent: this run's
    # Published before they were sent, by an earlier run of the same request id, within the
    # duplicate-detection window: Service Bus dropped this send, so no new outcome will come.
    duplicates: dict[str, OutcomeEvent]


async def wait_for_outcome(
    client: ServiceBusClient,
    queue: str,
    request_id: str,
    *,
    sent_at: datetime,
    within_seconds: float,
    poll_seconds: float = 1.0,
) -> Followed:
    """The request's outcome event once it is on `queue`, by peeking: it stays there for its consumer."""
    return await wait_for_outcomes(
        client, queue, [request_id], sent_at=sent_at, within_seconds=within_seconds, poll_seconds=poll_seconds
    )


async def wait_for_outcomes(
    client: ServiceBusClient,
    queue: str,
    request_ids: Iterable[str],
    *,
    sent_at: datetime,
    within_seconds: float,
    poll_seconds: float = 1.0,
    on_outcome: Callable[[OutcomeEvent], None] | None = None,
    clock_skew: timedelta = CLOCK_SKEW,
) -> Followed:
    """The requests' outcome events as they arrive on `queue`, by peeking (they stay there for their
    consumer), in one pass over the queue however many are awaited; stops when all arrived or time is up.

    An outcome enqueued before `sent_at` belongs to an earlier run of the same request id (its
    outcome MessageId is the same): it is never reported as this run's. If that earlier run was
    accepted within the duplicate-detection window, Service Bus dropped this send, and the request
    is not waited for.
    """
    by_message_id = {outcome_message_id(request_id): request_id for request_id in request_ids}
    since = sent_at - clock_skew
    outcomes: dict[str, OutcomeEvent] = {}
    duplicates: dict[str, OutcomeEvent] = {}
    deadline = asyncio.get_running_loop().time() + within_seconds
    next_sequence = 0
    async with client.get_queue_receiver(queue) as receiver:
        while len(outcomes) + len(duplicates) < len(by_message_id):
            batch = await receiver.peek_messages(max_message_count=PEEK_BATCH, sequence_number=next_sequence)
            for message in batch:
                next_sequence = (message.sequence_number or 0) + 1
                request_id = by_message_id.get(str(message.message_id))
                if request_id is None or request_id in outcomes:
                    continue
                event = OutcomeEvent.model_validate_json(b"".join(message.body))
                if message.enqueued_time_utc is not None and message.enqueued_time_utc < since:
                    if event.accepted_at is not None and sent_at - event.accepted_at < DUPLICATE_WINDOW:
                        duplicates[request_id] = event
                    continue
                duplicates.pop(request_id, None)  # the send was not dropped after all
                outcomes[request_id] = event
                if on_outcome is not None:
                    on_outcome(event)
            if not batch:
                if asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(poll_seconds)
    return Followed(outcomes, duplicates)


def request_message(request: OnboardingRequest, request_id: str, *, reply_to: str | None = None) -> ServiceBusMessage:
    """A request as upstream sends it: MessageId = request id, so a resend is a duplicate."""
    return ServiceBusMessage(
        request.model_dump_json(exclude_none=True).encode(),
        message_id=request_id,
        content_type="application/json",
        reply_to=reply_to,
    )


async def submit(
    client: ServiceBusClient, requests: Iterable[OnboardingRequest], *, reply_to: str | None = None
) -> list[str]:
    """Send each request with MessageId = its request id (so a resend is a duplicate); return the ids."""
    messages: list[ServiceBusMessage] = []
    ids: list[str] = []
    for request in requests:
        request_id = request.request_id or f"req-{time.time_ns()}-{len(ids)}"
        ids.append(request_id)
        messages.append(request_message(request, request_id, reply_to=reply_to))
    async with client.get_queue_sender(StageName.CREATE_CONTACT.value) as sender:
        await sender.send_messages(messages)
    return ids


async def collect_outcomes(
    client: ServiceBusClient, queue: str, request_ids: Iterable[str], *, within_seconds: float
) -> dict[str, OutcomeEvent]:
    """Outcomes for the given requests, completing each; stops when all arrived or time is up."""
    wanted = set(request_ids)
    outcomes: dict[str, OutcomeEvent] = {}
    deadline = asyncio.get_running_loop().time() + within_seconds
    async with client.get_queue_receiver(queue) as receiver:
        while wanted - outcomes.keys():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            for message in await receiver.receive_messages(max_message_count=20, max_wait_time=min(remaining, 2)):
                outcome = OutcomeEvent.model_validate_json(b"".join(message.body))
                if outcome.request_id in wanted:
                    outcomes[outcome.request_id] = outcome
                await receiver.complete_message(message)
    return outcomes


async def peek_count(client: ServiceBusClient, queue: str, *, cap: int, dead_letters: bool = False) -> int:
    """Messages on a queue (or its dead-letter queue), up to `cap`: peeking needs only the data role an
    operator has; the management API's exact counts need Manage rights."""
    sub_queue = ServiceBusSubQueue.DEAD_LETTER if dead_letters else None
    count, next_sequence = 0, 0
    async with client.get_queue_receiver(queue, sub_queue=sub_queue) as receiver:
        while count < cap:
            batch = await receiver.peek_messages(
                max_message_count=min(PEEK_BATCH, cap - count), sequence_number=next_sequence
            )
            if not batch:
                break
            count += len(batch)
            next_sequence = (batch[-1].sequence_number or 0) + 1
    return count

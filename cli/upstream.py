"""What an upstream system does: put requests on `create-contact`, read outcome events back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.identity.aio import DefaultAzureCredential
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from pydantic import ValidationError

from shared.contracts import OnboardingRequest, OutcomeEvent, StageName
from shared.envelope import outcome_message_id
from shared.leases import NOTICE_SUBJECT
from shared.outbox import peeked
from shared.queues import DUPLICATE_WINDOW
from shared.setting_names import in_plain_words
from shared.settings import ServiceBusSettings

# A command line should fail within seconds when the namespace is unreachable, not after the
# SDK's default three retries (about 13 s).
CLIENT_RETRIES = 1
# Service Bus Standard refuses a batch over 256 KiB as the broker counts it. The SDK fills a batch to
# its own estimate, which came out 19 bytes short of what the emulator received (262,163 bytes for a
# full 262,144-byte batch of 1,000 rows), and Service Bus answers "exceeds the limit (262144 bytes)"
# the same way (azure-sdk-for-python issue 37916). A quarter to spare costs a few more sends.
BATCH_BYTES = 192 * 1024


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


async def is_queued(client: ServiceBusClient, queue: str, message_id: str) -> bool:
    async with client.get_queue_receiver(queue) as receiver:
        async for message in peeked(receiver):
            if message.message_id == message_id:
                return True
        return False


@dataclass(frozen=True)
class Mark:
    """Where an outcome queue stood just before a send: what is on it already is an earlier run's."""

    next_sequence: int  # Service Bus numbers a queue's messages in order: higher ones came later
    earlier: dict[str, OutcomeEvent]  # the awaited requests' outcomes from earlier runs
    at: datetime


@dataclass(frozen=True)
class Followed:
    """What following requests to their outcomes found."""

    outcomes: dict[str, OutcomeEvent]  # published after the mark: this run's
    # An earlier run accepted within the duplicate-detection window before the send: Service Bus
    # dropped this send, so no new outcome will come; the earlier one stands.
    duplicates: dict[str, OutcomeEvent]


def _outcome_ids(sources: Mapping[str, str]) -> dict[str, str]:
    """Each request's outcome MessageId (scoped by its source, whose own its id is) -> its request id."""
    return {outcome_message_id(request_id, source=source): request_id for request_id, source in sources.items()}


async def mark_outcomes(client: ServiceBusClient, queue: str, sources: Mapping[str, str]) -> Mark:
    """One peek pass over `queue` before sending: an outcome's MessageId is `<id>/outcome` in every run
    and outcomes stay on the queue (`--wait` only peeks), so a re-run finds the earlier run's there."""
    at = datetime.now(UTC)
    by_message_id = _outcome_ids(sources)
    earlier: dict[str, OutcomeEvent] = {}
    next_sequence = 0
    async with client.get_queue_receiver(queue) as receiver:
        async for message in peeked(receiver):
            next_sequence = (message.sequence_number or 0) + 1
            if (request_id := by_message_id.get(str(message.message_id))) is not None:
                earlier[request_id] = OutcomeEvent.model_validate_json(b"".join(message.body))
    return Mark(next_sequence, earlier, at)


async def wait_for_outcomes(
    client: ServiceBusClient,
    queue: str,
    sources: Mapping[str, str],
    *,
    mark: Mark,
    within_seconds: float,
    poll_seconds: float = 1.0,
    on_outcome: Callable[[OutcomeEvent], None] | None = None,
) -> Followed:
    """The requests' outcome events as they arrive on `queue` after `mark`, by peeking (they stay there
    for their consumer), in one pass however many are awaited; stops when every request is accounted
    for or time is up. A request whose earlier run was accepted within the duplicate-detection window
    before the mark is not waited for (Service Bus dropped the send), unless a new outcome comes after all.
    """
    by_message_id = _outcome_ids(sources)
    outcomes: dict[str, OutcomeEvent] = {}
    duplicates = {
        request_id: event
        for request_id, event in mark.earlier.items()
        if request_id in by_message_id.values()
        and event.accepted_at is not None
        and mark.at - event.accepted_at < DUPLICATE_WINDOW
    }
    deadline = asyncio.get_running_loop().time() + within_seconds
    next_sequence = mark.next_sequence
    async with client.get_queue_receiver(queue) as receiver:
        while len(outcomes) + len(duplicates) < len(by_message_id):
            async for message in peeked(receiver, next_sequence):  # what arrived since the last look
                next_sequence = (message.sequence_number or 0) + 1
                request_id = by_message_id.get(str(message.message_id))
                if request_id is None or request_id in outcomes:
                    continue
                duplicates.pop(request_id, None)  # the send was not dropped after all
                outcomes[request_id] = OutcomeEvent.model_validate_json(b"".join(message.body))
                if on_outcome is not None:
                    on_outcome(outcomes[request_id])
            if len(outcomes) + len(duplicates) == len(by_message_id):
                break
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(poll_seconds)
    return Followed(outcomes, duplicates)


def group_target(group: str) -> dict[str, str]:
    """A request's `group` from what a person writes: an SMTP address, else an object id."""
    return {"smtp_address": group} if "@" in group else {"object_id": group}


GROUP_RULE = "must be the group's SMTP address (name@domain) or its object id (a GUID), not its display name"
# What shared/contracts.py's patterns and types mean, in words, per field (its dotted location).
REQUEST_RULES = {
    "group.object_id": GROUP_RULE,
    "group.smtp_address": GROUP_RULE,
    "source_system": "must be 1-64 letters, digits, '.', '_' or '-'",
    "request_id": r"must be 1-128 characters without spaces, control characters, / \ # or ?",
    "expires_at": "must be a time with its time zone, such as 2027-03-31T17:00:00Z or 2027-03-31T19:00:00+02:00",
}


def request_problems(error: ValidationError, fields: Sequence[str] = ()) -> dict[str, str]:
    """Each field of a request the contract refused (the first dotted part: `group`), in plain words; a rule
    about the whole request (display_name, to onboard) is reported at the first of `fields` its words name."""
    problems: dict[str, str] = {}
    for problem in error.errors():
        named = next((name for name in fields if name in problem["msg"]), "request")
        field = str(problem["loc"][0]) if problem["loc"] else named
        problems.setdefault(field, in_plain_words(problem, REQUEST_RULES))
    return problems


def request_message(request: OnboardingRequest, request_id: str, *, reply_to: str | None = None) -> ServiceBusMessage:
    """A request as upstream sends it: MessageId = request id, so a resend is a duplicate."""
    return ServiceBusMessage(
        request.model_dump_json(exclude_none=True).encode(),
        message_id=request_id,
        content_type="application/json",
        reply_to=reply_to,
    )


async def submit(
    client: ServiceBusClient,
    requests: Iterable[OnboardingRequest],
    *,
    reply_to: str | None = None,
    sent: Callable[[int], None] | None = None,
) -> list[str]:
    """Send each request with MessageId = its request id (so a resend is a duplicate), in Service Bus
    batches (as many messages as fit in one send), telling `sent` how many went with each; return the ids."""
    ids: list[str] = []
    async with client.get_queue_sender(StageName.CREATE_CONTACT.value) as sender:
        batch = await sender.create_message_batch(max_size_in_bytes=BATCH_BYTES)
        for request in requests:
            request_id = request.request_id or f"req-{time.time_ns()}-{len(ids)}"
            ids.append(request_id)
            message = request_message(request, request_id, reply_to=reply_to)
            try:
                batch.add_message(message)
            except ValueError:  # MessageSizeExceededError: the batch is full
                await _send_batch(sender, batch, sent)
                batch = await sender.create_message_batch(max_size_in_bytes=BATCH_BYTES)
                batch.add_message(message)
        if len(batch):
            await _send_batch(sender, batch, sent)
    return ids


async def _send_batch(
    sender: ServiceBusSender, batch: ServiceBusMessageBatch, sent: Callable[[int], None] | None
) -> None:
    await sender.send_messages(batch)
    if sent is not None:
        sent(len(batch))


async def collect_outcomes(
    client: ServiceBusClient, queue: str, request_ids: Iterable[str], *, within_seconds: float
) -> dict[str, OutcomeEvent]:
    """Outcomes for the given requests, taking each off the queue as upstream's consumer does; stops when
    all arrived or time is up. For a stack of one's own (the tests, the benchmarks): the commands only
    peek (cli.following), since on a real namespace the outcomes belong to upstream's consumer."""
    wanted = set(request_ids)
    outcomes: dict[str, OutcomeEvent] = {}
    deadline = asyncio.get_running_loop().time() + within_seconds
    async with client.get_queue_receiver(queue) as receiver:
        while wanted - outcomes.keys():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            for message in await receiver.receive_messages(max_message_count=20, max_wait_time=min(remaining, 2)):
                if message.subject == NOTICE_SUBJECT:  # a lease's notice shares the queue: not an outcome
                    await receiver.complete_message(message)
                    continue
                outcome = OutcomeEvent.model_validate_json(b"".join(message.body))
                if outcome.request_id in wanted:
                    outcomes[outcome.request_id] = outcome
                await receiver.complete_message(message)
    return outcomes


async def peek_count(client: ServiceBusClient, queue: str, *, cap: int, dead_letters: bool = False) -> int:
    """Messages on a queue (or its dead-letter queue), up to `cap`: peeking needs only the data role an
    operator has; the management API's exact counts need Manage rights."""
    sub_queue = ServiceBusSubQueue.DEAD_LETTER if dead_letters else None
    count = 0
    async with client.get_queue_receiver(queue, sub_queue=sub_queue) as receiver:
        async for _ in peeked(receiver):
            count += 1
            if count >= cap:
                break
    return count

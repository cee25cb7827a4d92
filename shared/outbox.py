"""Where decisions' messages go (the `Outbox` port), and its Service Bus implementation: one client
per process and one cached sender per queue (`QueueSenders`), which also peeks the dead-letter
sub-queues for the dead-letter sweep (shared/dead_letters.py).

An aio sender opens its link lazily on first use, and two coroutines opening it at once break it
(the SDK is not safe for concurrent use of one handler), so each queue's sender has its own lock;
a send is bounded in time, so that a sender that never answers cannot hold that lock forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
)

from shared.settings import ServiceBusSettings

logger = logging.getLogger("onboarding.outbox")

PEEK_BATCH = 100  # messages per peek
# Far beyond a healthy send (milliseconds) or the SDK's own retries of a passing error (seconds).
SEND_TIMEOUT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 5.0


async def peeked(receiver: ServiceBusReceiver, from_sequence: int = 0) -> AsyncIterator[ServiceBusReceivedMessage]:
    """Every message from `from_sequence` to the end of the queue, in order, peeked (no lock, nothing
    settled): Service Bus numbers a queue's messages in the order they were enqueued."""
    while batch := await receiver.peek_messages(max_message_count=PEEK_BATCH, sequence_number=from_sequence):
        for message in batch:
            from_sequence = (message.sequence_number or 0) + 1
            yield message


class Outbox(Protocol):
    """What the runner and the dead-letter sweep send through; tests hand in a recording fake."""

    async def send(self, queue: str, message: ServiceBusMessage) -> None: ...

    async def schedule(self, queue: str, message: ServiceBusMessage, at: datetime) -> None: ...


async def send_to_reply_to(
    outbox: Outbox, reply_to: str | None, outcome_queue: str, message: ServiceBusMessage, *, what: str
) -> None:
    """An event about an earlier request (a lease's notice, a drift event) to that request's ReplyTo, else to
    the outcome queue, also when that ReplyTo queue is gone (`what` names the event in the log)."""
    if reply_to:
        try:
            await outbox.send(reply_to, message)
            return
        except UnknownQueueError:
            logger.warning("the request's ReplyTo queue does not exist; the %s goes to the outcome queue", what)
    await outbox.send(outcome_queue, message)


class UnknownQueueError(Exception):
    """The queue does not exist: Service Bus refuses its put-token with 404 (the SDK then raises
    ServiceBusAuthenticationError with that answer inside) or the entity is reported not found."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} does not exist")
        self.queue = queue


class QueueSenders:
    """The Outbox on Service Bus: a sender per queue, opened on first use and kept.

    A send is bounded (`send_timeout`): the SDK's own timeout does not cover every wait (a link whose
    connection never becomes ready is awaited forever, as seen after a broker restart, or against a
    broker that accepts the connection and never answers), and a stage waiting forever holds its
    queue's lock, so every later message to that queue would wait behind it. A send that times out is
    tried once more on a new sender (a duplicate, should the first have gone out after all, is dropped
    by the queue's duplicate detection: MessageIds are stable); a second timeout is an
    OperationTimeoutError.
    """

    def __init__(self, client: ServiceBusClient, *, send_timeout: float = SEND_TIMEOUT_SECONDS) -> None:
        self._client = client
        self._send_timeout = send_timeout
        self._senders: dict[str, ServiceBusSender] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def connect(cls, settings: ServiceBusSettings, credential: AsyncTokenCredential) -> QueueSenders:
        """The one way the app reaches its namespace: the connection string, else the namespace and
        `credential` (the app's managed identity), whichever the settings name."""
        if settings.servicebus_connection_string is not None:
            return cls(
                ServiceBusClient.from_connection_string(settings.servicebus_connection_string.get_secret_value())
            )
        assert settings.servicebus_namespace is not None  # ServiceBusSettings guarantees one of the two
        return cls(ServiceBusClient(settings.servicebus_namespace, credential))

    def _lock(self, queue: str) -> asyncio.Lock:
        return self._locks.setdefault(queue, asyncio.Lock())  # no await in between: atomic on the event loop

    def _sender(self, queue: str) -> ServiceBusSender:
        """The queue's sender; call it holding the queue's lock, so that a replaced one is never used."""
        if queue not in self._senders:
            self._senders[queue] = self._client.get_queue_sender(queue)
        return self._senders[queue]

    async def send(self, queue: str, message: ServiceBusMessage) -> None:
        async with self._lock(queue):
            try:
                await self._bounded(queue, lambda sender: sender.send_messages(message))
            except (MessagingEntityNotFoundError, ServiceBusAuthenticationError) as error:
                if not entity_not_found(error):
                    raise
                await self._drop(queue)  # a broken link must not be reused
                raise UnknownQueueError(queue) from error

    async def schedule(self, queue: str, message: ServiceBusMessage, at: datetime) -> None:
        async with self._lock(queue):
            await self._bounded(queue, lambda sender: sender.schedule_messages(message, at))

    async def _bounded(self, queue: str, operation: Callable[[ServiceBusSender], Awaitable[object]]) -> None:
        """`operation` on the queue's sender within the send timeout; once more on a new sender if not."""
        for last_try in (False, True):
            try:
                await asyncio.wait_for(operation(self._sender(queue)), self._send_timeout)
                return
            except TimeoutError:
                await self._drop(queue)
                if last_try:
                    raise OperationTimeoutError(
                        message=f"sending to queue {queue} did not complete within {self._send_timeout:g} s, "
                        "on a new sender either"
                    ) from None

    async def _drop(self, queue: str) -> None:
        sender = self._senders.pop(queue, None)
        if sender is not None:
            await _closed(sender)

    async def dead_letters(self, queue: str) -> AsyncIterator[ServiceBusReceivedMessage]:
        """Every message in `queue`'s dead-letter sub-queue, peeked: the sweep reads, never settles."""
        async with self._client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as receiver:
            async for message in peeked(receiver):
                yield message

    async def close(self) -> None:
        # Together: each close waits for the broker's answer to its detach (about half a second each).
        senders = list(self._senders.values())
        self._senders.clear()
        await asyncio.gather(*(_closed(sender) for sender in senders))
        await self._client.close()


async def _closed(sender: ServiceBusSender) -> None:
    with contextlib.suppress(Exception):  # a sender that hung may hang closing too, or fail to
        await asyncio.wait_for(sender.close(), CLOSE_TIMEOUT_SECONDS)


def entity_not_found(error: Exception) -> bool:
    """Service Bus's answer for a queue that does not exist: the SDK raises it as an authentication error."""
    if isinstance(error, MessagingEntityNotFoundError):
        return True
    return getattr(getattr(error, "inner_exception", None), "status_code", None) == 404

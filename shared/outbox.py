"""Where decisions' messages go (the `Outbox` port), and its Service Bus implementation: one client
per process and one cached sender per queue (`QueueSenders`), which also peeks the dead-letter
sub-queues for the dead-letter sweep (shared/dead_letters.py).

An aio sender opens its link lazily on first use, and two coroutines opening it at once break it
(the SDK is not safe for concurrent use of one handler), so each queue's sender has its own lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import MessagingEntityNotFoundError, ServiceBusAuthenticationError

from shared.settings import ServiceBusSettings

PEEK_BATCH = 100  # messages per peek


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


class UnknownQueueError(Exception):
    """The queue does not exist: Service Bus refuses its put-token with 404 (the SDK then raises
    ServiceBusAuthenticationError with that answer inside) or the entity is reported not found."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} does not exist")
        self.queue = queue


class QueueSenders:
    """The Outbox on Service Bus: a sender per queue, opened on first use and kept."""

    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client
        self._senders: dict[str, tuple[ServiceBusSender, asyncio.Lock]] = {}

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

    def _sender(self, queue: str) -> tuple[ServiceBusSender, asyncio.Lock]:
        if queue not in self._senders:  # no await in between: atomic on the event loop
            self._senders[queue] = (self._client.get_queue_sender(queue), asyncio.Lock())
        return self._senders[queue]

    async def send(self, queue: str, message: ServiceBusMessage) -> None:
        sender, lock = self._sender(queue)
        async with lock:
            try:
                await sender.send_messages(message)
            except (MessagingEntityNotFoundError, ServiceBusAuthenticationError) as error:
                if not entity_not_found(error):
                    raise
                del self._senders[queue]  # a broken link must not be reused
                await sender.close()
                raise UnknownQueueError(queue) from error

    async def schedule(self, queue: str, message: ServiceBusMessage, at: datetime) -> None:
        sender, lock = self._sender(queue)
        async with lock:
            await sender.schedule_messages(message, at)

    async def dead_letters(self, queue: str) -> AsyncIterator[ServiceBusReceivedMessage]:
        """Every message in `queue`'s dead-letter sub-queue, peeked: the sweep reads, never settles."""
        async with self._client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as receiver:
            async for message in peeked(receiver):
                yield message

    async def close(self) -> None:
        # Together: each close waits for the broker's answer to its detach (about half a second each).
        senders = [sender for sender, _ in self._senders.values()]
        self._senders.clear()
        await asyncio.gather(*(sender.close() for sender in senders))
        await self._client.close()


def entity_not_found(error: Exception) -> bool:
    """Service Bus's answer for a queue that does not exist: the SDK raises it as an authentication error."""
    if isinstance(error, MessagingEntityNotFoundError):
        return True
    return getattr(getattr(error, "inner_exception", None), "status_code", None) == 404

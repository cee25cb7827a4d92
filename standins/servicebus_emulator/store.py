"""Queue semantics without any protocol: peek-lock, settlement, scheduling, dead-lettering, duplicates.

Only the broker thread touches a QueueStore, so it needs no locks. Messages are kept as the
encoded AMQP bytes the sender produced; the broker adds the broker-owned annotations on delivery.
Kept in memory; with a MessageLog (sqlite_log.py) every change is also written, before the
broker acknowledges it, so an emulator restart loses nothing.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from standins.servicebus_emulator.config import EmulatorConfig, QueueConfig

DEAD_LETTER_SUFFIX = "/$deadletterqueue"
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
# What Service Bus sets on a message it dead-letters for expiry.
TTL_EXPIRED = "TTLExpiredException"
TTL_EXPIRED_DESCRIPTION = "The message expired and was dead lettered."
TRAILS_KEPT = 50_000  # MessageIds whose trail is kept; the oldest go first


class EntityNotFound(KeyError):
    """No queue of that name is configured."""


class LockLost(KeyError):
    """The lock token is unknown or expired (the SDK reports MessageLockLostError)."""


@dataclass
class StoredMessage:
    sequence_number: int
    encoded: bytes
    message_id: str | None
    enqueued_at: datetime
    visible_at: datetime
    delivery_count: int = 0  # deliveries before the current one, as AMQP's header counts them
    lock_token: uuid.UUID | None = None
    locked_until: datetime | None = None
    deferred: bool = False
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    expires_at: datetime | None = None

    @property
    def scheduled(self) -> bool:
        return self.visible_at > self.enqueued_at

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class MessageLog(Protocol):
    """Where a durable store writes every change before the broker acknowledges it."""

    def saved(self, queue: str, message: StoredMessage) -> None: ...

    def removed(self, sequence_number: int) -> None: ...

    def seen(self, queue: str, message_id: str, at: datetime) -> None: ...


@dataclass
class Queue:
    name: str
    config: QueueConfig
    is_dead_letter_queue: bool = False
    log: MessageLog | None = None
    messages: dict[int, StoredMessage] = field(default_factory=dict)  # insertion order = sequence order
    seen_message_ids: dict[str, datetime] = field(default_factory=dict)

    def put(self, message: StoredMessage) -> None:
        self.messages[message.sequence_number] = message
        self.save(message)

    def remove(self, message: StoredMessage) -> None:
        del self.messages[message.sequence_number]
        if self.log:
            self.log.removed(message.sequence_number)

    def save(self, message: StoredMessage) -> None:
        if self.log:
            self.log.saved(self.name, message)

    def is_duplicate(self, message_id: str | None, now: datetime) -> bool:
        if not self.config.requires_duplicate_detection or message_id is None:
            return False
        window = self.config.duplicate_detection_history_time_window
        self.seen_message_ids = {k: t for k, t in self.seen_message_ids.items() if now - t < window}
        if message_id in self.seen_message_ids:
            return True
        self.seen_message_ids[message_id] = now
        if self.log:
            self.log.seen(self.name, message_id, now)
        return False

    def available(self, now: datetime) -> Iterator[StoredMessage]:
        # An expired message is never handed out, even before the next tick moves it away
        # (a dead-letter queue does not observe time-to-live).
        observes_ttl = not self.is_dead_letter_queue
        return (
            m
            for m in self.messages.values()
            if m.visible_at <= now and m.lock_token is None and not m.deferred and not (observes_ttl and m.expired(now))
        )

    def expires(self, message: StoredMessage, now: datetime) -> bool:
        """Time-to-live is not observed in a dead-letter queue, nor while a message is locked or deferred."""
        return (
            not self.is_dead_letter_queue
            and message.lock_token is None
            and not message.deferred
            and message.expired(now)
        )


class QueueStore:
    def __init__(self, config: EmulatorConfig, log: MessageLog | None = None) -> None:
        self._queues: dict[str, Queue] = {}
        for queue_config in config.queues:
            name = queue_config.name.lower()
            dead_letters = name + DEAD_LETTER_SUFFIX
            self._queues[name] = Queue(name, queue_config, log=log)
            self._queues[dead_letters] = Queue(dead_letters, queue_config, is_dead_letter_queue=True, log=log)
        self._sequence = itertools.count(1)
        self._locks: dict[uuid.UUID, tuple[str, int]] = {}
        # What happened to each MessageId, for a test that asks where a message went (not kept on disk).
        self._trails: dict[str, list[str]] = {}

    def trail(self, message_id: str) -> list[str]:
        """What the broker did with the messages of this MessageId (as codec.message_id_of names it), in order."""
        return list(self._trails.get(message_id, ()))

    def _note(self, queue: str, message_id: str | None, what: str, sequence_number: int | None = None) -> None:
        if message_id is None:
            return
        if message_id not in self._trails and len(self._trails) >= TRAILS_KEPT:
            del self._trails[next(iter(self._trails))]  # the oldest MessageId's trail
        number = f" #{sequence_number}" if sequence_number is not None else ""
        self._trails.setdefault(message_id, []).append(f"{queue}{number}: {what}")

    def restore(
        self,
        messages: list[tuple[str, StoredMessage]],
        seen: list[tuple[str, str, datetime]],
        last_sequence_number: int = 0,
    ) -> None:
        """Reload what a durable log kept. Locks are not kept: a message locked at the stop is available again.
        Numbering carries on after the highest number ever handed out, also one whose message is gone."""
        for name, message in messages:
            if name in self._queues:
                self._queues[name].messages[message.sequence_number] = message
        for name, message_id, at in seen:
            if name in self._queues:
                self._queues[name].seen_message_ids[message_id] = at
        last = max((message.sequence_number for _, message in messages), default=last_sequence_number)
        last = max(last, last_sequence_number)
        self._sequence = itertools.count(last + 1)

    def queue(self, name: str) -> Queue:
        try:
            return self._queues[name.lower()]
        except KeyError:
            raise EntityNotFound(name) from None

    def queue_names(self) -> list[str]:
        return list(self._queues)

    def enqueue(
        self,
        name: str,
        encoded: bytes,
        message_id: str | None,
        now: datetime,
        visible_at: datetime | None = None,
        time_to_live: timedelta | None = None,
    ) -> int | None:
        """Store a sent message; None when duplicate detection drops it (the send still succeeds)."""
        queue = self.queue(name)
        if queue.is_dead_letter_queue:
            raise EntityNotFound(f"{name}: cannot send to a dead-letter queue")
        if queue.is_duplicate(message_id, now):
            self._note(name, message_id, "dropped as a duplicate")
            return None
        sequence_number = next(self._sequence)
        visible = max(now, visible_at or now)
        # The queue's default is also the ceiling; a scheduled message's clock starts when it is enqueued.
        default = queue.config.default_message_time_to_live
        lifetime = min(time_to_live, default) if time_to_live else default
        try:
            expires_at: datetime | None = visible + lifetime
        except OverflowError:  # TimeSpan.MaxValue, Service Bus's "never"
            expires_at = None
        queue.put(StoredMessage(sequence_number, encoded, message_id, now, visible, expires_at=expires_at))
        self._note(name, message_id, "stored", sequence_number)
        return sequence_number

    def cancel_scheduled(self, name: str, sequence_numbers: list[int]) -> None:
        queue = self.queue(name)
        for number in sequence_numbers:
            message = queue.messages.get(number)
            if message is not None and message.scheduled and message.lock_token is None:
                queue.remove(message)
                self._note(name, message.message_id, "scheduled, cancelled", number)

    def lock_next(self, name: str, now: datetime) -> StoredMessage | None:
        queue = self.queue(name)
        message = next(queue.available(now), None)
        if message is None:
            return None
        self._lock(name, queue, message, now)
        return message

    def _lock(self, name: str, queue: Queue, message: StoredMessage, now: datetime) -> None:
        message.lock_token = uuid.uuid4()
        message.locked_until = now + queue.config.lock_duration
        self._locks[message.lock_token] = (name.lower(), message.sequence_number)
        self._note(name, message.message_id, f"locked (delivery {message.delivery_count + 1})", message.sequence_number)

    def take_next(self, name: str, now: datetime) -> StoredMessage | None:
        """Receive-and-delete: the message leaves the queue as it is handed out."""
        queue = self.queue(name)
        message = next(queue.available(now), None)
        if message is not None:
            queue.remove(message)
            self._note(name, message.message_id, "received and deleted", message.sequence_number)
        return message

    def receive_deferred(
        self, name: str, sequence_numbers: list[int], now: datetime, *, delete: bool
    ) -> list[StoredMessage]:
        """Hand out deferred messages by sequence number: locked (peek-lock) or removed (receive-and-delete)."""
        queue = self.queue(name)
        found = [queue.messages[n] for n in sequence_numbers if n in queue.messages]
        deferred = [m for m in found if m.deferred and m.lock_token is None]
        for message in deferred:
            if delete:
                queue.remove(message)
            else:
                self._lock(name, queue, message, now)
        return deferred

    def peek(self, name: str, from_sequence_number: int, count: int) -> list[StoredMessage]:
        queue = self.queue(name)
        return [m for m in queue.messages.values() if m.sequence_number >= from_sequence_number][:count]

    def _locked(self, token: uuid.UUID) -> tuple[Queue, StoredMessage]:
        try:
            name, sequence_number = self._locks[token]
            queue = self._queues[name]
            return queue, queue.messages[sequence_number]
        except KeyError:
            raise LockLost(str(token)) from None

    def _unlock(self, message: StoredMessage) -> None:
        if message.lock_token is not None:
            self._locks.pop(message.lock_token, None)
        message.lock_token = None
        message.locked_until = None

    def complete(self, token: uuid.UUID) -> None:
        queue, message = self._locked(token)
        self._unlock(message)
        queue.remove(message)
        self._note(queue.name, message.message_id, "completed", message.sequence_number)

    def abandon(self, token: uuid.UUID) -> None:
        queue, message = self._locked(token)
        self._failed_delivery(queue, message)

    def release(self, token: uuid.UUID) -> None:
        """AMQP released: the message was never handed to the application; no delivery is counted."""
        queue, message = self._locked(token)
        self._unlock(message)
        self._note(queue.name, message.message_id, "released", message.sequence_number)

    def defer(self, token: uuid.UUID) -> None:
        queue, message = self._locked(token)
        self._unlock(message)
        message.deferred = True
        queue.save(message)

    def dead_letter(self, token: uuid.UUID, reason: str | None, description: str | None) -> None:
        queue, message = self._locked(token)
        self._move_to_dead_letters(queue, message, reason, description)

    def renew_lock(self, token: uuid.UUID, now: datetime) -> datetime:
        queue, message = self._locked(token)
        message.locked_until = now + queue.config.lock_duration
        return message.locked_until

    def expire_locks(self, now: datetime) -> list[str]:
        """Return messages whose lock ran out; names of queues that gained available messages."""
        touched = []
        for token, (name, sequence_number) in list(self._locks.items()):
            queue = self._queues[name]
            message = queue.messages[sequence_number]
            if message.locked_until is not None and message.locked_until <= now:
                del self._locks[token]
                self._failed_delivery(queue, message)
                touched.append(name)
        return touched

    def expire_messages(self, now: datetime) -> None:
        """Dead-letter (when the queue says so) or drop every message whose time-to-live ran out."""
        for queue in self._queues.values():
            if queue.is_dead_letter_queue:
                continue
            for message in [m for m in queue.messages.values() if queue.expires(m, now)]:
                if queue.config.dead_lettering_on_message_expiration:
                    self._move_to_dead_letters(queue, message, TTL_EXPIRED, TTL_EXPIRED_DESCRIPTION)
                else:
                    queue.remove(message)
                    self._note(queue.name, message.message_id, "expired", message.sequence_number)

    def _failed_delivery(self, queue: Queue, message: StoredMessage) -> None:
        self._note(queue.name, message.message_id, "abandoned or lock lost", message.sequence_number)
        self._unlock(message)
        message.delivery_count += 1
        queue.save(message)
        if message.delivery_count >= queue.config.max_delivery_count and not queue.is_dead_letter_queue:
            self._move_to_dead_letters(
                queue,
                message,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {queue.config.max_delivery_count} delivery attempts.",
            )

    def _move_to_dead_letters(
        self, queue: Queue, message: StoredMessage, reason: str | None, description: str | None
    ) -> None:
        self._note(queue.name, message.message_id, f"dead-lettered ({reason})", message.sequence_number)
        self._unlock(message)
        if queue.is_dead_letter_queue:
            queue.remove(message)  # Service Bus: dead-lettering from the DLQ removes the message
            return
        del queue.messages[message.sequence_number]  # the row moves with put() below
        dead_letters = self._queues[queue.config.name.lower() + DEAD_LETTER_SUFFIX]
        message.dead_letter_reason = reason
        message.dead_letter_description = description
        message.deferred = False
        dead_letters.put(message)

"""The few AMQP encoding facts the broker needs, on top of python-qpid-proton's codec."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from proton import Data, Described, Message, symbol, timestamp, uint, ulong

from standins.servicebus_emulator.store import StoredMessage

SCHEDULED_ENQUEUE_TIME = symbol("x-opt-scheduled-enqueue-time")
SEQUENCE_NUMBER = symbol("x-opt-sequence-number")
ENQUEUED_TIME = symbol("x-opt-enqueued-time")
LOCKED_UNTIL = symbol("x-opt-locked-until")
DEAD_LETTER_SOURCE = symbol("x-opt-deadletter-source")
MESSAGE_STATE = symbol("x-opt-message-state")  # 0 active, 1 deferred, 2 scheduled (the SDK's ServiceBusMessageState)

_HEADER_SECTION = 0x70
_DATA_SECTION = 0x75
_HEADER_FIELDS_BEFORE_DELIVERY_COUNT = 4  # durable, priority, ttl, first-acquirer


def to_datetime(value: Any) -> datetime | None:
    """AMQP timestamps are milliseconds since the epoch."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def to_timestamp(value: datetime) -> timestamp:
    return timestamp(int(value.timestamp() * 1000))


def _sections(encoded: bytes) -> list[tuple[int, Any]]:
    sections, position = [], 0
    while position < len(encoded):
        data = Data()
        position += data.decode(encoded[position:])
        data.rewind()
        data.next()
        described = data.get_object()
        value = described.value
        # Binary values are views into the decoder's buffer, which is freed with `data`: copy now.
        sections.append((int(described.descriptor), bytes(value) if isinstance(value, memoryview) else value))
    return sections


def split_batch(encoded: bytes) -> list[bytes]:
    """The messages inside one transfer.

    The SDK sends a batch as a message of format 0x80013700: the first message's properties,
    then one data section per message, each holding that message fully encoded. Proton does not
    expose the transfer's message format, so a batch is recognised by that shape instead.
    """
    bodies = [bytes(value) for code, value in _sections(encoded) if code == _DATA_SECTION]
    if bodies and all(_is_encoded_message(body) for body in bodies):
        return bodies
    return [encoded]


def _is_encoded_message(data: bytes) -> bool:
    # Every AMQP message starts with a described section: 0x00, smallulong 0x53, code 0x70-0x78.
    return len(data) > 2 and data[:2] == b"\x00\x53" and 0x70 <= data[2] <= 0x78


def decode(encoded: bytes) -> Message:
    message = Message()
    message.decode(encoded)
    return message


def message_id_of(message: Message) -> str | None:
    return message_id_text(message.id)


def message_id_text(raw: object) -> str | None:
    """A MessageId as the broker compares them (duplicate detection): one text per distinct id. A string is
    itself; an id of another AMQP type is named by its type and value. Proton hands a binary id over as a
    memoryview, whose str() is its memory address: two different ids could share one, and a message was
    dropped as a duplicate of another."""
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, memoryview | bytes | bytearray):
        return f"<binary 0x{bytes(raw).hex()}>"
    return f"<{type(raw).__name__} {raw}>"


def scheduled_time_of(message: Message) -> datetime | None:
    return to_datetime((message.annotations or {}).get(SCHEDULED_ENQUEUE_TIME))


def time_to_live_of(message: Message) -> timedelta | None:
    """The header's ttl (proton reports seconds, 0 when absent)."""
    return timedelta(seconds=message.ttl) if message.ttl else None


def for_delivery(stored: StoredMessage, queue_name: str) -> Message:
    """The stored message with the annotations the broker owns, as Service Bus adds them."""
    message = decode(stored.encoded)
    annotations = dict(message.annotations or {})
    annotations[SEQUENCE_NUMBER] = stored.sequence_number
    annotations[ENQUEUED_TIME] = to_timestamp(stored.enqueued_at)
    if stored.locked_until is not None:
        annotations[LOCKED_UNTIL] = to_timestamp(stored.locked_until)
    annotations[MESSAGE_STATE] = 1 if stored.deferred else 2 if stored.visible_at > datetime.now(UTC) else 0
    if stored.dead_letter_reason is not None or stored.dead_letter_description is not None:
        annotations[DEAD_LETTER_SOURCE] = queue_name
        properties: dict[Any, Any] = dict(message.properties or {})
        properties["DeadLetterReason"] = stored.dead_letter_reason or ""
        properties["DeadLetterErrorDescription"] = stored.dead_letter_description or ""
        message.properties = properties
    message.annotations = annotations
    message.delivery_count = stored.delivery_count
    return message


def encode_for_delivery(stored: StoredMessage, queue_name: str) -> bytes:
    """for_delivery's message encoded, its header carrying delivery-count even when it is 0.

    Proton leaves a 0 out (AMQP's default), and the azure-servicebus SDK then reports
    delivery_count None; Service Bus sends the field, so the SDK reports 0 on a first delivery.
    """
    encoded = bytes(for_delivery(stored, queue_name).encode())
    first = Data()
    consumed = first.decode(encoded)
    first.rewind()
    first.next()
    section = first.get_object()
    fields: list[Any] = []
    if int(section.descriptor) == _HEADER_SECTION:
        fields = list(section.value)[:_HEADER_FIELDS_BEFORE_DELIVERY_COUNT]
        encoded = encoded[consumed:]
    fields += [None] * (_HEADER_FIELDS_BEFORE_DELIVERY_COUNT - len(fields))  # null: the field's default
    header = Data()
    header.put_object(Described(ulong(_HEADER_SECTION), [*fields, uint(stored.delivery_count)]))
    return bytes(header.encode()) + encoded


def lock_token_tag(token: uuid.UUID) -> bytes:
    # The SDK reads the lock token back as uuid.UUID(bytes_le=delivery_tag).
    return token.bytes_le

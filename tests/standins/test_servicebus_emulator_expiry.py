"""Time-to-live: expired messages are never delivered; dead-lettered or dropped as the queue says."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus import aio as servicebus_aio

from standins.servicebus_emulator import EmulatorConfig, QueueConfig, ServiceBusEmulator
from standins.servicebus_emulator.store import QueueStore

pytestmark = pytest.mark.stack  # every test here starts stand-ins

StartEmulator = Callable[[EmulatorConfig], ServiceBusEmulator]
DEAD_LETTERING = "expiring"  # DeadLetteringOnMessageExpiration: true
DROPPING = "dropping"  # false, and a one-second default time-to-live
DEADLINE_SECONDS = 15


def expiry_config() -> EmulatorConfig:
    return EmulatorConfig(
        queues=(
            QueueConfig.model_validate(
                {"Name": DEAD_LETTERING, "DeadLetteringOnMessageExpiration": True, "DefaultMessageTimeToLive": "PT1H"}
            ),
            QueueConfig.model_validate({"Name": DROPPING, "DefaultMessageTimeToLive": "PT1S"}),
        )
    )


def receive_one(sb: ServiceBusClient, queue: str, *, dead_letters: bool = False) -> ServiceBusReceivedMessage:
    """Poll until a message arrives (expiry is noticed on the broker's next tick)."""
    sub_queue = ServiceBusSubQueue.DEAD_LETTER if dead_letters else None
    deadline = time.monotonic() + DEADLINE_SECONDS
    with sb.get_queue_receiver(queue, sub_queue=sub_queue) as receiver:
        while time.monotonic() < deadline:
            for message in receiver.receive_messages(max_message_count=1, max_wait_time=1):
                receiver.complete_message(message)
                return message
    raise AssertionError(f"nothing arrived on {queue} (dead letters: {dead_letters})")


def wait_until_empty(sb: ServiceBusClient, queue: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    with sb.get_queue_receiver(queue) as receiver:
        while receiver.peek_messages(max_message_count=5):
            assert time.monotonic() < deadline, f"{queue} still holds a message past its time-to-live"
            time.sleep(0.2)


def test_an_expired_message_is_dead_lettered_with_the_service_bus_reason(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(expiry_config())
    with ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        with sb.get_queue_sender(DEAD_LETTERING) as sender:
            sender.send_messages(
                [
                    ServiceBusMessage("short", message_id="t-1", time_to_live=timedelta(seconds=1)),
                    ServiceBusMessage("long", message_id="t-2"),  # the queue's default: an hour
                ]
            )
        dead = receive_one(sb, DEAD_LETTERING, dead_letters=True)
        assert dead.message_id == "t-1"
        assert dead.dead_letter_reason == "TTLExpiredException"
        assert dead.dead_letter_error_description == "The message expired and was dead lettered."
        with sb.get_queue_receiver(DEAD_LETTERING) as receiver:
            (long_lived,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert long_lived.message_id == "t-2"
            receiver.complete_message(long_lived)
            assert receiver.peek_messages(max_message_count=5) == []  # t-1 was never delivered from here


def test_without_dead_lettering_on_expiration_an_expired_message_is_dropped(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(expiry_config())
    with ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        with sb.get_queue_sender(DROPPING) as sender:
            # No time-to-live of its own; a longer one is capped by the queue's default.
            sender.send_messages(
                [
                    ServiceBusMessage("default", message_id="d-1"),
                    ServiceBusMessage("capped", message_id="d-2", time_to_live=timedelta(hours=1)),
                ]
            )
        wait_until_empty(sb, DROPPING)  # peek sees every message, locked or not
        with sb.get_queue_receiver(DROPPING, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dead_letters:
            assert dead_letters.peek_messages(max_message_count=5) == []


async def test_an_expired_message_sent_with_the_async_client_is_dead_lettered(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(expiry_config())
    async with servicebus_aio.ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        async with sb.get_queue_sender(DEAD_LETTERING) as sender:
            await sender.send_messages(ServiceBusMessage("short", message_id="a-1", time_to_live=timedelta(seconds=1)))
        deadline = time.monotonic() + DEADLINE_SECONDS
        async with sb.get_queue_receiver(DEAD_LETTERING, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dead_letters:
            received: list[ServiceBusReceivedMessage] = []
            while not received and time.monotonic() < deadline:
                received = await dead_letters.receive_messages(max_message_count=1, max_wait_time=1)
            (dead,) = received
            assert (dead.message_id, dead.dead_letter_reason) == ("a-1", "TTLExpiredException")
            await dead_letters.complete_message(dead)


def test_expiry_survives_a_restart(tmp_path: Path) -> None:
    database = tmp_path / "servicebus.db"
    with ServiceBusEmulator(expiry_config(), database=database) as before:
        with ServiceBusClient.from_connection_string(before.connection_string) as sb:
            with sb.get_queue_sender(DEAD_LETTERING) as sender:
                sender.send_messages(ServiceBusMessage("short", message_id="r-1", time_to_live=timedelta(seconds=3)))
    # Precondition: the message was still waiting in the queue when the emulator stopped.
    assert [m.message_id for m in before.store.queue(DEAD_LETTERING).messages.values()] == ["r-1"]
    with ServiceBusEmulator(expiry_config(), database=database) as after:
        with ServiceBusClient.from_connection_string(after.connection_string) as sb:
            dead = receive_one(sb, DEAD_LETTERING, dead_letters=True)
            assert (dead.message_id, dead.dead_letter_reason) == ("r-1", "TTLExpiredException")


def test_an_expired_message_is_never_handed_out_even_before_the_tick_moves_it() -> None:
    # Pure queue logic, at chosen instants: no tick runs here at all.
    store = QueueStore(expiry_config())
    sent = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    store.enqueue(DEAD_LETTERING, b"x", "m-1", sent, time_to_live=timedelta(seconds=1))
    store.enqueue(DEAD_LETTERING, b"y", "m-2", sent, time_to_live=timedelta(minutes=5))
    later = sent + timedelta(seconds=2)
    first = store.lock_next(DEAD_LETTERING, later)
    assert first is not None and first.message_id == "m-2", "the expired m-1 was skipped"
    assert store.lock_next(DEAD_LETTERING, later) is None

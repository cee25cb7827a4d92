"""The Service Bus emulator, driven by the real azure-servicebus SDK (sync and aio)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus import aio as servicebus_aio
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageProperties
from azure.servicebus.exceptions import ServiceBusAuthenticationError, ServiceBusError

from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator

pytestmark = pytest.mark.stack  # every test here starts stand-ins

QUEUE = "create-contact"
StartEmulator = Callable[[EmulatorConfig], ServiceBusEmulator]


def client(emulator: ServiceBusEmulator) -> ServiceBusClient:
    return ServiceBusClient.from_connection_string(emulator.connection_string)


def send(emulator: ServiceBusEmulator, *messages: ServiceBusMessage, queue: str = QUEUE) -> None:
    with client(emulator) as sb, sb.get_queue_sender(queue) as sender:
        sender.send_messages(list(messages) if len(messages) > 1 else messages[0])


def test_every_property_round_trips(servicebus_emulator: ServiceBusEmulator) -> None:
    send(
        servicebus_emulator,
        ServiceBusMessage(
            b'{"a": 1}',
            message_id="m-1",
            correlation_id="corr-1",
            reply_to="replies",
            subject="subject-1",
            content_type="application/json",
            to="someone",
            time_to_live=timedelta(minutes=5),
            application_properties={"attempt": "2", "count": 7},
        ),
    )
    with client(servicebus_emulator) as sb, sb.get_queue_receiver(QUEUE) as receiver:
        (message,) = receiver.receive_messages(max_message_count=5, max_wait_time=5)
        assert b"".join(message.body) == b'{"a": 1}'
        assert (message.message_id, message.correlation_id, message.reply_to) == ("m-1", "corr-1", "replies")
        assert (message.subject, message.content_type, message.to) == ("subject-1", "application/json", "someone")
        assert message.time_to_live == timedelta(minutes=5)
        assert message.application_properties == {b"attempt": b"2", b"count": 7}
        assert message.sequence_number == 1
        assert message.enqueued_time_utc is not None
        assert message.locked_until_utc is not None and message.locked_until_utc > datetime.now(UTC)
        receiver.complete_message(message)
        assert receiver.receive_messages(max_message_count=5, max_wait_time=1) == []


def test_batch_send_delivers_each_message(servicebus_emulator: ServiceBusEmulator) -> None:
    send(servicebus_emulator, *(ServiceBusMessage(f"body-{i}", message_id=f"id-{i}") for i in range(5)))
    with client(servicebus_emulator) as sb, sb.get_queue_receiver(QUEUE) as receiver:
        received: list[ServiceBusReceivedMessage] = []
        while len(received) < 5 and (batch := receiver.receive_messages(max_message_count=10, max_wait_time=3)):
            received += batch
        assert [(m.message_id, str(m)) for m in received] == [(f"id-{i}", f"body-{i}") for i in range(5)]
        assert [m.sequence_number for m in received] == [1, 2, 3, 4, 5]


def test_abandon_redelivers_with_a_higher_delivery_count(servicebus_emulator: ServiceBusEmulator) -> None:
    send(servicebus_emulator, ServiceBusMessage("x", message_id="a-1"))
    with client(servicebus_emulator) as sb, sb.get_queue_receiver(QUEUE) as receiver:
        assert receiver.peek_messages(max_message_count=1)[0].delivery_count == 0
        (first,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert first.delivery_count == 0  # Service Bus sends the header's delivery-count on a first delivery too
        receiver.abandon_message(first)
        (again,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert again.message_id == "a-1"
        assert again.delivery_count == 1
        assert again.lock_token != first.lock_token
        receiver.complete_message(again)


def test_dead_letter_keeps_reason_and_description(servicebus_emulator: ServiceBusEmulator) -> None:
    send(servicebus_emulator, ServiceBusMessage(b"{oops", message_id="d-1"))
    with client(servicebus_emulator) as sb:
        with sb.get_queue_receiver(QUEUE) as receiver:
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            receiver.dead_letter_message(message, reason="InvalidRequest", error_description="not JSON")
            assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
        with sb.get_queue_receiver(QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dead_letters:
            (peeked,) = dead_letters.peek_messages(max_message_count=5)
            assert peeked.message_id == "d-1"
            (dead,) = dead_letters.receive_messages(max_message_count=5, max_wait_time=5)
            assert (dead.dead_letter_reason, dead.dead_letter_error_description) == ("InvalidRequest", "not JSON")
            assert b"".join(dead.body) == b"{oops"
            dead_letters.complete_message(dead)


def test_expired_lock_redelivers_and_max_delivery_count_dead_letters(start_emulator: StartEmulator) -> None:
    config = EmulatorConfig.default().with_overrides(lock_duration=timedelta(seconds=1), max_delivery_count=2)
    emulator = start_emulator(config)
    send(emulator, ServiceBusMessage("slow", message_id="l-1"))
    with client(emulator) as sb:
        with sb.get_queue_receiver(QUEUE) as receiver:
            (first,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            (second,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)  # after the lock expired
            assert second.message_id == "l-1" and second.delivery_count == 1
            with pytest.raises(ServiceBusError):
                receiver.complete_message(first)  # its lock is gone
            assert receiver.receive_messages(max_message_count=1, max_wait_time=3) == []
        with sb.get_queue_receiver(QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dead_letters:
            (dead,) = dead_letters.receive_messages(max_message_count=1, max_wait_time=5)
            assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"


def test_scheduled_messages_wait_and_can_be_cancelled(servicebus_emulator: ServiceBusEmulator) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=3)
    with client(servicebus_emulator) as sb:
        with sb.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage("by-annotation", message_id="s-1", scheduled_enqueue_time_utc=soon))
            (kept,) = sender.schedule_messages(ServiceBusMessage("by-management", message_id="s-2"), soon)
            (cancelled,) = sender.schedule_messages(ServiceBusMessage("cancelled", message_id="s-3"), soon)
            sender.cancel_scheduled_messages(cancelled)
            assert kept > 0
        with sb.get_queue_receiver(QUEUE) as receiver:
            received: list[tuple[str | None, datetime]] = []
            while len(received) < 2 and datetime.now(UTC) < soon + timedelta(seconds=10):
                for message in receiver.receive_messages(max_message_count=5, max_wait_time=1):
                    received.append((message.message_id, datetime.now(UTC)))
                    receiver.complete_message(message)
            assert sorted(message_id or "" for message_id, _ in received) == ["s-1", "s-2"]
            assert all(at >= soon for _, at in received), "a scheduled message arrived early"
            assert receiver.receive_messages(max_message_count=5, max_wait_time=1) == []  # s-3 stays cancelled


def test_duplicate_message_ids_are_dropped(servicebus_emulator: ServiceBusEmulator) -> None:
    send(servicebus_emulator, ServiceBusMessage("one", message_id="same"))
    send(servicebus_emulator, ServiceBusMessage("two", message_id="same"))
    with (
        client(servicebus_emulator) as sb,
        sb.get_queue_receiver(QUEUE, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver,
    ):
        received = receiver.receive_messages(max_message_count=5, max_wait_time=2)
        assert [str(m) for m in received] == ["one"]
        assert receiver.receive_messages(max_message_count=5, max_wait_time=1) == []  # deleted on receipt


def test_binary_message_ids_are_told_apart_by_their_bytes(servicebus_emulator: ServiceBusEmulator) -> None:
    """Duplicate detection compares the ids' values. (Proton hands a binary id over as a memoryview, whose
    str() names its address: freed and reused, two ids had one text and the second message was dropped.)"""
    ids = [bytes([0xFF, 0x00, n]) for n in range(200)] + [b"\xff\x00\x07"]  # the last one is a duplicate
    with client(servicebus_emulator) as sb, sb.get_queue_sender(QUEUE) as sender:
        for message_id in ids:
            sender.send_messages(
                AmqpAnnotatedMessage(data_body=[b"{}"], properties=AmqpMessageProperties(message_id=message_id))
            )
    with (
        client(servicebus_emulator) as sb,
        sb.get_queue_receiver(QUEUE, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver,
    ):
        received: list[object] = []
        while batch := receiver.receive_messages(max_message_count=100, max_wait_time=2):
            received += [m.message_id for m in batch]
    assert received == ids[:-1]


def test_the_trail_of_a_message_id_says_what_the_broker_did(servicebus_emulator: ServiceBusEmulator) -> None:
    send(servicebus_emulator, ServiceBusMessage("one", message_id="traced"))
    send(servicebus_emulator, ServiceBusMessage("two", message_id="traced"))
    with client(servicebus_emulator) as sb, sb.get_queue_receiver(QUEUE) as receiver:
        (message,) = receiver.receive_messages(max_message_count=5, max_wait_time=2)
        receiver.complete_message(message)
    number = message.sequence_number
    assert servicebus_emulator.store.trail("traced") == [
        f"{QUEUE} #{number}: stored",
        f"{QUEUE}: dropped as a duplicate",
        f"{QUEUE} #{number}: locked (delivery 1)",
        f"{QUEUE} #{number}: completed",
    ]


def test_unknown_queue_is_refused_at_put_token_as_service_bus_does(servicebus_emulator: ServiceBusEmulator) -> None:
    no_retries = ServiceBusClient.from_connection_string(servicebus_emulator.connection_string, retry_total=0)
    with no_retries as sb:
        with pytest.raises(ServiceBusAuthenticationError) as on_send, sb.get_queue_sender("no-such-queue") as sender:
            sender.send_messages(ServiceBusMessage("x"))
        with (
            pytest.raises(ServiceBusAuthenticationError) as on_receive,
            sb.get_queue_receiver("no-such-queue") as receiver,
        ):
            receiver.receive_messages(max_wait_time=1)
        with sb.get_queue_sender("create-contact") as sender:  # the same client still works for a real queue
            sender.send_messages(ServiceBusMessage("x"))
    for raised in (on_send.value, on_receive.value):
        refusal = raised.inner_exception  # the put-token answer, as Azure Service Bus gives it
        assert getattr(refusal, "status_code", None) == 404
        assert "The messaging entity 'sb://localhost:" in str(refusal)
        assert "/no-such-queue' could not be found." in str(refusal)


def test_concurrent_receivers_never_share_a_message(servicebus_emulator: ServiceBusEmulator) -> None:
    send(servicebus_emulator, *(ServiceBusMessage(str(i), message_id=f"c-{i}") for i in range(20)))
    seen: list[list[str]] = [[], []]

    def drain(index: int) -> None:
        with client(servicebus_emulator) as sb, sb.get_queue_receiver(QUEUE) as receiver:
            while batch := receiver.receive_messages(max_message_count=3, max_wait_time=2):
                for message in batch:
                    seen[index].append(message.message_id or "")
                    receiver.complete_message(message)

    workers = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(seen[0] + seen[1]) == sorted(f"c-{i}" for i in range(20))
    assert not set(seen[0]) & set(seen[1])


async def test_async_client_settles_through_the_same_semantics(servicebus_emulator: ServiceBusEmulator) -> None:
    async with servicebus_aio.ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as sb:
        async with sb.get_queue_sender(QUEUE) as sender:
            await sender.send_messages(
                [ServiceBusMessage("a", message_id="x-1"), ServiceBusMessage("b", message_id="x-2")]
            )
        async with sb.get_queue_receiver(QUEUE) as receiver:
            messages = await receiver.receive_messages(max_message_count=2, max_wait_time=5)
            messages += await receiver.receive_messages(max_message_count=2, max_wait_time=1)
            assert {m.message_id for m in messages} == {"x-1", "x-2"}
            first, second = messages
            await receiver.renew_message_lock(first)
            await receiver.complete_message(first)
            await receiver.dead_letter_message(second, reason="R", error_description="D")
        async with sb.get_queue_receiver(QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dead_letters:
            (dead,) = await dead_letters.receive_messages(max_message_count=5, max_wait_time=5)
            assert dead.message_id == second.message_id and dead.dead_letter_reason == "R"


def test_a_client_sending_garbage_does_not_stop_the_others(servicebus_emulator: ServiceBusEmulator) -> None:
    with socket.create_connection(("127.0.0.1", servicebus_emulator.port), timeout=5) as rogue:
        rogue.sendall(b"AMQP\x00\x01\x00\x00" + b"\xff" * 64)
    send(servicebus_emulator, ServiceBusMessage("still here", message_id="g-1"))
    with client(servicebus_emulator) as sb, sb.get_queue_receiver(QUEUE) as receiver:
        (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(message) == "still here"


def test_config_file_errors_are_specific(tmp_path: Path) -> None:
    bad = tmp_path / "Config.json"
    bad.write_text(
        json.dumps(
            {"UserConfig": {"Namespaces": [{"Queues": [{"Name": "q", "Properties": {"LockDuration": "1 minute"}}]}]}}
        )
    )
    with pytest.raises(ValueError, match=r"queue 'q' is invalid(.|\n)*ISO 8601"):
        EmulatorConfig.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        EmulatorConfig.load(tmp_path / "absent.json")
    bad.write_text(json.dumps({"UserConfig": {"Namespaces": ["sbemulatorns"]}}))
    with pytest.raises(ValueError, match=r"expected UserConfig\.Namespaces\[\]\.Queues\[\]"):
        EmulatorConfig.load(bad)


def test_peek_reads_without_locking_and_deferred_messages_come_back_by_sequence_number(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    send(servicebus_emulator, ServiceBusMessage("p", message_id="p-1"), ServiceBusMessage("q", message_id="p-2"))
    with client(servicebus_emulator) as sb, sb.get_queue_receiver(QUEUE) as receiver:
        peeked = receiver.peek_messages(max_message_count=5)
        assert [m.message_id for m in peeked] == ["p-1", "p-2"]
        received: list[ServiceBusReceivedMessage] = []
        while len(received) < 2 and (batch := receiver.receive_messages(max_message_count=2, max_wait_time=3)):
            received += batch  # peek locked nothing: both arrive
        first, second = sorted(received, key=lambda m: m.sequence_number or 0)
        assert first.state is ServiceBusMessageState.ACTIVE
        receiver.defer_message(first)
        receiver.complete_message(second)
        # Peek shows a deferred message with its state (docs/service-bus-facts.md, "Message states").
        peeked_again = receiver.peek_messages(max_message_count=5, sequence_number=first.sequence_number or 0)
        assert [m.state for m in peeked_again] == [ServiceBusMessageState.DEFERRED]
        assert receiver.receive_messages(max_message_count=5, max_wait_time=1) == []  # deferred stays aside
        (deferred,) = receiver.receive_deferred_messages([first.sequence_number or 0])
        assert deferred.message_id == "p-1"
        receiver.complete_message(deferred)  # settled through $management: a deferred message has no link
        assert receiver.receive_deferred_messages([first.sequence_number or 0]) == []
        assert receiver.peek_messages(max_message_count=5) == []


def test_a_restart_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    database = tmp_path / "servicebus.db"
    config = EmulatorConfig.default()
    with ServiceBusEmulator(config, database=database) as before:
        send(before, *(ServiceBusMessage(f"m{i}", message_id=f"r-{i}") for i in range(3)))
        with client(before) as sb:
            with sb.get_queue_receiver(QUEUE) as receiver:
                first, second = receiver.receive_messages(max_message_count=2, max_wait_time=5)
                receiver.complete_message(first)
                receiver.dead_letter_message(second, reason="Kept", error_description="across restarts")
                (held,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
                assert held.message_id == "r-2"  # locked, never settled: the restart must release it
    with ServiceBusEmulator(config, database=database) as after:
        send(after, ServiceBusMessage("again", message_id="r-0"))  # still a duplicate after the restart
        send(after, ServiceBusMessage("new", message_id="r-3"))
        with client(after) as sb:
            with sb.get_queue_receiver(QUEUE, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
                received = receiver.receive_messages(max_message_count=5, max_wait_time=3)
                received += receiver.receive_messages(max_message_count=5, max_wait_time=1)
            assert [(m.message_id, m.sequence_number) for m in received] == [("r-2", 3), ("r-3", 4)]
            with sb.get_queue_receiver(QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dead_letters:
                (dead,) = dead_letters.peek_messages(max_message_count=5)
                assert (dead.message_id, dead.dead_letter_reason) == ("r-1", "Kept")


async def test_a_message_released_between_receive_calls_is_available_at_once(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    cs = servicebus_emulator.connection_string
    async with (
        servicebus_aio.ServiceBusClient.from_connection_string(cs) as sb,
        sb.get_queue_receiver(QUEUE) as idle,
        sb.get_queue_receiver(QUEUE) as other,
    ):
        assert await idle.receive_messages(max_message_count=5, max_wait_time=0.5) == []  # leaves credit open
        async with sb.get_queue_sender(QUEUE) as sender:
            await sender.send_messages(ServiceBusMessage("between calls", message_id="between"))
        await asyncio.sleep(0.5)  # the idle receiver is handed the message and releases it, pre-settled
        (message,) = await other.receive_messages(max_message_count=1, max_wait_time=5)  # not after the lock expires
        assert message.message_id == "between"
        assert message.delivery_count == 0  # a release is not a failed delivery
        await other.complete_message(message)

"""A restart of a durable emulator in the middle of a run: nothing acknowledged is lost or completed twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus import ServiceBusReceiver as Receiver

from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator

pytestmark = pytest.mark.stack  # every test here starts stand-ins

QUEUE = "create-contact"
DEADLINE_SECONDS = 30


def complete_all(receiver: Receiver, messages: list[ServiceBusReceivedMessage], completed: list[str]) -> None:
    for message in messages:
        receiver.complete_message(message)  # raises if the emulator refuses: then it is not counted
        completed.append(message.message_id or "")


def test_a_restart_mid_run_loses_no_acknowledged_message(tmp_path: Path) -> None:
    database = tmp_path / "servicebus.db"
    config = EmulatorConfig.default()
    before_ids = [f"before-{i}" for i in range(150)]
    after_ids = [f"after-{i}" for i in range(50)]
    completed: list[str] = []
    first = ServiceBusEmulator(config, database=database)
    first.start()
    # One client and one sender for the whole run: the SDK reconnects by itself after the restart.
    with (
        ServiceBusClient.from_connection_string(first.connection_string) as sb,
        sb.get_queue_sender(QUEUE) as sender,
    ):
        try:
            for start in range(0, len(before_ids), 50):  # each send acknowledged before the next
                sender.send_messages([ServiceBusMessage(i, message_id=i) for i in before_ids[start : start + 50]])
            with sb.get_queue_receiver(QUEUE) as receiver:
                deadline = time.monotonic() + DEADLINE_SECONDS
                while len(completed) < 60 and time.monotonic() < deadline:
                    complete_all(receiver, receiver.receive_messages(max_message_count=20, max_wait_time=2), completed)
                assert len(completed) >= 60
                held = receiver.receive_messages(max_message_count=10, max_wait_time=2)
                assert held, "some messages should be locked, unsettled, when the emulator stops"
                highest_before = max(m.sequence_number or 0 for m in held)
                first.stop()  # mid-run: this receiver still holds its locks and its connection
        finally:
            first.stop()
        second = ServiceBusEmulator(config, port=first.port, database=database)  # same database, same port
        second.start()
        try:
            sender.send_messages([ServiceBusMessage(i, message_id=i) for i in after_ids])
            after_sequence_numbers: list[int] = []
            with sb.get_queue_receiver(QUEUE) as receiver:
                deadline = time.monotonic() + DEADLINE_SECONDS
                while len(set(completed)) < len(before_ids) + len(after_ids) and time.monotonic() < deadline:
                    batch = receiver.receive_messages(max_message_count=50, max_wait_time=2)
                    after_sequence_numbers += [
                        m.sequence_number or 0 for m in batch if (m.message_id or "").startswith("after-")
                    ]
                    complete_all(receiver, batch, completed)
                assert receiver.peek_messages(max_message_count=5) == []
        finally:
            second.stop()

    assert len(completed) == len(set(completed)), "a message was completed twice"
    assert sorted(completed) == sorted(before_ids + after_ids), "an acknowledged message went missing"
    assert len(after_sequence_numbers) == len(after_ids)
    assert min(after_sequence_numbers) > highest_before, "sequence numbers went backwards after the restart"


def test_sequence_numbers_are_never_reused_after_a_restart_even_when_the_queue_was_empty(tmp_path: Path) -> None:
    database = tmp_path / "servicebus.db"
    config = EmulatorConfig.default()
    with (
        ServiceBusEmulator(config, database=database) as first,
        ServiceBusClient.from_connection_string(first.connection_string) as sb,
    ):
        with sb.get_queue_sender(QUEUE) as sender:
            sender.send_messages([ServiceBusMessage(f"m{i}", message_id=f"m{i}") for i in range(3)])
        with sb.get_queue_receiver(QUEUE) as receiver:
            done: list[str] = []
            deadline = time.monotonic() + DEADLINE_SECONDS
            while len(done) < 3 and time.monotonic() < deadline:
                complete_all(receiver, receiver.receive_messages(max_message_count=3, max_wait_time=2), done)
            assert len(done) == 3
    with (
        ServiceBusEmulator(config, database=database) as second,
        ServiceBusClient.from_connection_string(second.connection_string) as sb,
    ):
        with sb.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage("after", message_id="after"))
        with sb.get_queue_receiver(QUEUE) as receiver:
            (message,) = receiver.peek_messages(max_message_count=1)
    assert (message.sequence_number or 0) > 3, "a completed message's number came back"

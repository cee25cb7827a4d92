"""Misbehaving clients get an error or are dropped; the emulator keeps serving everyone else."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceivedMessage
from proton import Connection, Message, Transport
from proton.utils import BlockingConnection

from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator

pytestmark = pytest.mark.stack  # every test here starts stand-ins

QUEUE = "create-contact"
StartEmulator = Callable[[EmulatorConfig], ServiceBusEmulator]
DEADLINE_SECONDS = 15


def round_trip(emulator: ServiceBusEmulator, message_id: str) -> None:
    """An SDK client sends and completes one message: the emulator still serves."""
    with ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        with sb.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage("still served", message_id=message_id))
        with sb.get_queue_receiver(QUEUE) as receiver:
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert message.message_id == message_id
            receiver.complete_message(message)


def test_a_malformed_frame_drops_that_connection_only(servicebus_emulator: ServiceBusEmulator) -> None:
    with socket.create_connection(("127.0.0.1", servicebus_emulator.port), timeout=DEADLINE_SECONDS) as rogue:
        # A well-formed frame header around an open performative that does not decode.
        frame_body = b"\x00\x53\x10" + b"\xff" * 21
        rogue.sendall(b"AMQP\x00\x01\x00\x00" + struct.pack(">IBBH", 8 + len(frame_body), 2, 0, 0) + frame_body)
        while rogue.recv(4096):  # ends at end-of-stream; a connection left open raises TimeoutError
            pass
    round_trip(servicebus_emulator, "after-garbage")


def test_an_unknown_or_malformed_management_request_gets_an_error_status(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    connection = BlockingConnection(f"amqp://127.0.0.1:{servicebus_emulator.port}", timeout=DEADLINE_SECONDS)
    try:
        replies = connection.create_receiver(f"{QUEUE}/$management", credit=10)
        requests = connection.create_sender(f"{QUEUE}/$management")
        requests.send(
            Message(id="unknown-1", reply_to="raw-replies", properties={"operation": "com.microsoft:unknown"}, body={})
        )
        unknown = replies.receive(timeout=DEADLINE_SECONDS)
        requests.send(
            Message(
                id="malformed-1",
                reply_to="raw-replies",
                properties={"operation": "com.microsoft:renew-lock"},
                body={"lock-tokens": ["not a lock token"]},
            )
        )
        malformed = replies.receive(timeout=DEADLINE_SECONDS)
    finally:
        connection.close()
    assert unknown.correlation_id == "unknown-1"
    assert unknown.properties["statusCode"] == 501
    assert malformed.correlation_id == "malformed-1"
    assert malformed.properties["statusCode"] == 400
    round_trip(servicebus_emulator, "after-management")


def test_a_client_vanishing_mid_transfer_leaves_nothing_behind(servicebus_emulator: ServiceBusEmulator) -> None:
    # A bare proton engine over a plain socket, so the test decides when the socket goes.
    connection, transport = Connection(), Transport()
    transport.sasl().allowed_mechs("ANONYMOUS")
    transport.bind(connection)
    connection.open()
    session = connection.session()
    session.open()
    sender = session.sender("vanishing")
    sender.target.address = QUEUE
    sender.open()
    with socket.create_connection(("127.0.0.1", servicebus_emulator.port), timeout=0.1) as rogue:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while sender.credit == 0:
            assert time.monotonic() < deadline, "the emulator never gave credit"
            _exchange(transport, rogue)
        sender.delivery(b"half")
        encoded = Message(body=b"z" * 4000, id="half-sent").encode()
        sender.send(encoded[:3000])  # no advance(): a transfer with more=true, never finished
        _exchange(transport, rogue)
        assert transport.pending() == 0  # the partial transfer left before the socket closed
    round_trip(servicebus_emulator, "after-vanishing-sender")
    with (
        ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as sb,
        sb.get_queue_receiver(QUEUE) as receiver,
    ):
        assert receiver.peek_messages(max_message_count=5) == []  # the half message was never enqueued


def _exchange(transport: Transport, sock: socket.socket) -> None:
    pending = transport.pending()
    if pending > 0:
        sock.sendall(transport.peek(pending))
        transport.pop(pending)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return
    assert data, "the emulator closed the connection"
    transport.push(data)


_VANISHING_RECEIVER = """
import os, sys
from azure.servicebus import ServiceBusClient
receiver = ServiceBusClient.from_connection_string(sys.argv[1]).get_queue_receiver(sys.argv[2])
(message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
print(message.message_id, message.locked_until_utc.isoformat(), flush=True)
os._exit(0)  # no detach, no close: the socket just goes
"""


def test_a_message_locked_by_a_vanished_client_returns_when_its_lock_expires(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(EmulatorConfig.default().with_overrides(lock_duration=timedelta(seconds=2)))
    with ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        with sb.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage("orphaned", message_id="orphan"))
        vanished = subprocess.run(  # noqa: S603  # our own interpreter and script
            [sys.executable, "-c", _VANISHING_RECEIVER, emulator.connection_string, QUEUE],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        message_id, locked_until = vanished.stdout.split()
        assert message_id == "orphan"
        with sb.get_queue_receiver(QUEUE) as receiver:
            # As in Service Bus, the lock outlives its link: no release, the lock has to run out.
            redelivered: list[ServiceBusReceivedMessage] = []
            deadline = time.monotonic() + DEADLINE_SECONDS
            while not redelivered and time.monotonic() < deadline:
                redelivered = receiver.receive_messages(max_message_count=1, max_wait_time=1)
            (message,) = redelivered
            assert datetime.now(UTC) >= datetime.fromisoformat(locked_until)
            assert (message.message_id, message.delivery_count) == ("orphan", 1)
            receiver.complete_message(message)

"""The Standard tier's 256 KB message size limit, as the SDK and a plain AMQP client see it."""

from __future__ import annotations

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus import aio as servicebus_aio
from azure.servicebus.exceptions import MessageSizeExceededError
from proton import Delivery, Message
from proton.utils import BlockingConnection

from standins.servicebus_emulator import ServiceBusEmulator

pytestmark = pytest.mark.stack  # every test here starts stand-ins

QUEUE = "create-contact"
KB = 1024


def test_a_255_kb_message_goes_through_and_a_larger_one_is_refused(servicebus_emulator: ServiceBusEmulator) -> None:
    with ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as sb:
        with sb.get_queue_sender(QUEUE) as sender:
            sender.send_messages(ServiceBusMessage(b"a" * 255 * KB, message_id="fits"))
            with pytest.raises(MessageSizeExceededError):
                sender.send_messages(ServiceBusMessage(b"b" * 300 * KB, message_id="too-big"))
            batch = sender.create_message_batch()
            batch.add_message(ServiceBusMessage(b"c" * 200 * KB, message_id="in-batch"))
            with pytest.raises(MessageSizeExceededError):
                batch.add_message(ServiceBusMessage(b"d" * 100 * KB))
            sender.send_messages(batch)  # the same link still works
        with sb.get_queue_receiver(QUEUE) as receiver:
            received: list[ServiceBusReceivedMessage] = []
            while len(received) < 2 and (more := receiver.receive_messages(max_message_count=2, max_wait_time=5)):
                received += more
            assert [(m.message_id, len(b"".join(m.body))) for m in received] == [
                ("fits", 255 * KB),
                ("in-batch", 200 * KB),
            ]
            for message in received:
                receiver.complete_message(message)


async def test_the_async_client_reports_an_oversize_message(servicebus_emulator: ServiceBusEmulator) -> None:
    async with servicebus_aio.ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as sb:
        async with sb.get_queue_sender(QUEUE) as sender:
            with pytest.raises(MessageSizeExceededError):
                await sender.send_messages(ServiceBusMessage(b"b" * 257 * KB))
            batch = await sender.create_message_batch()
            with pytest.raises(MessageSizeExceededError):
                batch.add_message(ServiceBusMessage(b"d" * 257 * KB))
            await sender.send_messages(ServiceBusMessage("small", message_id="after"))
        async with sb.get_queue_receiver(QUEUE) as receiver:
            (message,) = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert message.message_id == "after"
            await receiver.complete_message(message)


def test_a_client_ignoring_the_advertised_limit_is_refused_alone(servicebus_emulator: ServiceBusEmulator) -> None:
    connection = BlockingConnection(f"amqp://127.0.0.1:{servicebus_emulator.port}", timeout=10)
    try:
        sender = connection.create_sender(QUEUE)
        assert sender.link.remote_max_message_size == 256 * KB  # what Service Bus Standard advertises
        refused = sender.send(Message(body=b"x" * 400 * KB, id="raw-big"), error_states=[])
        assert refused.remote_state == Delivery.REJECTED
        assert refused.remote.condition.name == "amqp:link:message-size-exceeded"
        accepted = sender.send(Message(body=b"small", id="raw-small"), error_states=[])
        assert accepted.remote_state == Delivery.ACCEPTED
    finally:
        connection.close()
    with (
        ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as sb,
        sb.get_queue_receiver(QUEUE) as receiver,
    ):
        (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert message.message_id == "raw-small"
        receiver.complete_message(message)
        assert receiver.peek_messages(max_message_count=5) == []

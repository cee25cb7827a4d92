"""The app's senders (shared/outbox.py) through the real azure-servicebus SDK."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import OperationTimeoutError

from shared.outbox import QueueSenders
from tests.waiting import HANG_GUARD_SECONDS

pytestmark = pytest.mark.stack  # a socket and the SDK's AMQP connection


@contextmanager
def broker_that_never_answers() -> Iterator[str]:
    """A connection string to a listener that accepts the connection and then says nothing, as a wedged
    link after a broker restart: the SDK waits for it forever, whatever its own timeouts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        yield f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;"


async def test_a_send_that_never_completes_ends_and_does_not_hold_the_queue_for_the_next_one() -> None:
    """Before, the first send waited forever holding add-member's lock, and every later message to
    add-member waited behind it: a host that stalled after a broker restart. Now each is given up after
    its timeout, tried once more on a new sender, then refused."""
    with broker_that_never_answers() as connection:
        async with ServiceBusClient.from_connection_string(connection) as client:
            outbox = QueueSenders(client, send_timeout=1)
            sends = [outbox.send("add-member", ServiceBusMessage(b"{}")) for _ in range(2)]
            results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), HANG_GUARD_SECONDS)
            scheduled = asyncio.wait_for(
                outbox.schedule("add-member", ServiceBusMessage(b"{}"), _soon()), HANG_GUARD_SECONDS
            )
            with pytest.raises(OperationTimeoutError, match="did not complete within 1 s, on a new sender either"):
                await scheduled
            await outbox.close()
    assert [type(result) for result in results] == [OperationTimeoutError, OperationTimeoutError]


def _soon() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=1)

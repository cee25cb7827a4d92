"""Emulator throughput with the real SDK: send, then receive-and-complete, N messages.

.venv/bin/python -m benchmarks.servicebus_emulator [--messages 10000] [--batch 100] [--database FILE]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from azure.servicebus import ServiceBusClient, ServiceBusMessage

from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator

QUEUE = "create-contact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--database", type=Path, help="measure the durable (SQLite) store instead of memory")
    arguments = parser.parse_args()
    total, batch = arguments.messages, arguments.batch
    body = b'{"external_email": "x@fabrikam.example", "display_name": "X"}'

    with (
        ServiceBusEmulator(EmulatorConfig.default(), database=arguments.database) as emulator,
        ServiceBusClient.from_connection_string(emulator.connection_string) as client,
    ):
        started = time.perf_counter()
        with client.get_queue_sender(QUEUE) as sender:
            for first in range(0, total, batch):
                sender.send_messages(
                    [ServiceBusMessage(body, message_id=f"bench-{i}") for i in range(first, min(total, first + batch))]
                )
        sent_seconds = time.perf_counter() - started

        started, received = time.perf_counter(), 0
        with client.get_queue_receiver(QUEUE) as receiver:
            while received < total:
                messages = receiver.receive_messages(max_message_count=batch, max_wait_time=5)
                if not messages:
                    break
                for message in messages:
                    receiver.complete_message(message)
                received += len(messages)
        received_seconds = time.perf_counter() - started

    store = "SQLite" if arguments.database else "memory"
    print(f"Service Bus emulator ({store} store), {total} messages, batches of {batch}")
    print(f"  send:                 {total / sent_seconds:9.0f} messages/s  ({sent_seconds:.2f} s)")
    print(
        f"  receive and complete: {received / received_seconds:9.0f} messages/s  ({received_seconds:.2f} s, {received} received)"
    )
    print(
        f"  peak RSS of this process (client and emulator): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()

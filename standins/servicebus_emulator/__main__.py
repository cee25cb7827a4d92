"""`python -m standins.servicebus_emulator [--port 5672] [--config Config.json]`: run in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--config", type=Path, help="Config.json in the format of Microsoft's emulator")
    parser.add_argument("--database", type=Path, help="SQLite file that keeps messages across restarts")
    arguments = parser.parse_args()
    config = EmulatorConfig.load(arguments.config) if arguments.config else EmulatorConfig.default()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with ServiceBusEmulator(config, port=arguments.port, database=arguments.database) as emulator:
        print(f"Service Bus emulator on 127.0.0.1:{emulator.port}; queues: {', '.join(q.name for q in config.queues)}")
        print(f"ServiceBusConnection={emulator.connection_string}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()

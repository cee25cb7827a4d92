"""`python -m standins.servicebus_emulator [--port 5672] [--config Config.json] [--database FILE]`."""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator

app = typer.Typer(add_completion=False, help="Run the Service Bus emulator in the foreground until Ctrl+C.")


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Loopback port (Microsoft's emulator uses 5672)")] = 5672,
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Config.json in the format of Microsoft's emulator"),
    ] = None,
    database: Annotated[
        Path | None, typer.Option(dir_okay=False, help="SQLite file that keeps messages across restarts")
    ] = None,
    management_port: Annotated[
        int, typer.Option(min=1, max=65535, help="HTTP port of the management endpoint (Microsoft's uses 5300)")
    ] = 5300,
) -> None:
    try:
        queues = EmulatorConfig.load(config) if config else EmulatorConfig.default()
    except ValueError as error:  # a readable message, not a traceback
        raise typer.BadParameter(str(error), param_hint="--config") from error
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with ServiceBusEmulator(queues, port=port, management_port=management_port, database=database) as emulator:
        print(f"Service Bus emulator on 127.0.0.1:{emulator.port}; queues: {', '.join(q.name for q in queues.queues)}")
        # Quoted: the connection string holds `;`, which a shell sourcing .env would cut at.
        print(f"ServiceBusConnection={shlex.quote(emulator.connection_string)}")
        management = shlex.quote(emulator.management_connection_string)
        print(f"ONBOARDING_SERVICEBUS_MANAGEMENT_CONNECTION={management}", flush=True)
        stop.wait()


if __name__ == "__main__":
    app()

"""ServiceBusEmulator: the broker on its own thread, started and stopped from any other thread."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from types import TracebackType

from proton.reactor import ApplicationEvent, Container, EventInjector

from standins.servicebus_emulator.broker import Broker
from standins.servicebus_emulator.config import EmulatorConfig
from standins.servicebus_emulator.management import MANAGE_RULE, ManagementEndpoint, management_app
from standins.servicebus_emulator.sqlite_log import SqliteMessageLog
from standins.servicebus_emulator.store import QueueStore

logger = logging.getLogger("standins.servicebus_emulator")
START_TIMEOUT_SECONDS = 10


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class ServiceBusEmulator:
    def __init__(
        self,
        config: EmulatorConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        management_port: int = 0,
        database: Path | None = None,
    ) -> None:
        """`database`: a SQLite file that keeps messages across restarts; None keeps them in memory.
        `management_port`: the HTTP port of the management endpoint (Microsoft's emulator uses 5300)."""
        self.config = config
        self.host = host
        self.port = port or free_port(host)
        self.management = ManagementEndpoint(management_app(config), host=host, port=management_port or free_port(host))
        self._log = SqliteMessageLog(database) if database else None
        self.store = QueueStore(config, self._log)
        if self._log:
            self.store.restore(*self._log.load())
        self._ready = threading.Event()
        self._injector = EventInjector()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def connection_string(self) -> str:
        """The connection string of Microsoft's emulator, with this port."""
        return (
            f"Endpoint=sb://localhost:{self.port};SharedAccessKeyName={MANAGE_RULE};"
            "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
        )

    @property
    def management_connection_string(self) -> str:
        """For the administration client, as Microsoft's emulator has it: the same string on the management port."""
        return self.connection_string.replace(f"localhost:{self.port};", f"localhost:{self.management.port};", 1)

    def start(self) -> None:
        if self._thread is not None:
            return
        broker = Broker(self.store, self.host, self.port, self._ready.set, on_stopped=self._injector.close)
        container = Container(broker)
        container.selectable(self._injector)
        self._thread = threading.Thread(target=self._run, args=(container,), name="servicebus-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS) or self._failure:
            self.stop()
            raise RuntimeError(f"the Service Bus emulator did not start on {self.host}:{self.port}: {self._failure}")
        try:
            self.management.start()
        except RuntimeError:
            self.stop()
            raise

    def _run(self, container: Container) -> None:
        try:
            container.run()
        except BaseException as error:  # reported by start(), and logged: the thread must not die silently
            logger.exception("the Service Bus emulator stopped unexpectedly")
            self._failure = error
            self._ready.set()

    def cpu_seconds(self) -> float | None:
        """CPU time the broker's thread has used so far (Linux: /proc/self/task; None elsewhere or when
        stopped), for benchmarks that ask whether the emulator limits what they measure."""
        thread_id = self._thread.native_id if self._thread is not None else None
        try:
            fields = Path(f"/proc/self/task/{thread_id}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # utime and stime, the 14th and 15th fields of proc(5), counted after the ")" that ends the name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.management.stop()
        if self._thread is None:
            return
        self._injector.trigger(ApplicationEvent("stop_emulator"))
        self._thread.join(timeout=10)
        self._injector.close()  # already closed by a clean stop; this covers a reactor that died
        self._thread = None
        if self._log:
            self._log.close()

    def __enter__(self) -> ServiceBusEmulator:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

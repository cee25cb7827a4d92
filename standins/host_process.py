"""The local Functions host as a child process (`onboard host`), as the platform starts an instance.

The chaos run kills it with SIGKILL and starts it again; the scale-out benchmark starts several
side by side against one emulator and one sandbox, as Flex Consumption runs several instances.
Each runs in a session of its own, so a kill takes its whole process group and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping

STOP_SECONDS = 15.0


class HostProcess:
    """`python -m cli host --quiet` with `environment` added to this process's own."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._environment = dict(environment)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "host",
            "--quiet",
            env={**os.environ, **self._environment},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )

    async def kill(self) -> None:
        """SIGKILL: the host gets no chance to finish or settle anything."""
        if self._process is not None and self._process.returncode is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()

    async def stop(self) -> None:
        """SIGTERM: in-flight invocations finish and settle; SIGKILL after STOP_SECONDS."""
        if self._process is not None and self._process.returncode is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), timeout=STOP_SECONDS)
            except TimeoutError:
                await self.kill()

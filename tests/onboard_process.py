"""`onboard` as a person runs it: a child process in a directory of its own, with a clean environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.waiting import HANG_GUARD_SECONDS

REPOSITORY = Path(__file__).resolve().parent.parent


def onboard_environment(columns: int = 120) -> dict[str, str]:
    # Only what a fresh terminal has: no ONBOARDING_* or ServiceBusConnection from the test's process.
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "PYTHONPATH": str(REPOSITORY),  # this checkout's packages, whatever the venv's editable install names
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": str(columns),
        "LINES": "40",
    }


def run_onboard(*args: str, cwd: Path, timeout: float = 120, columns: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # our own interpreter and command
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=onboard_environment(columns),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class RunningOnboard:
    """A long-running `onboard` command (sandbox, host); its output lines, stdout and stderr together."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(  # noqa: S603  # our own interpreter and command
            [sys.executable, "-m", "cli", *args],
            cwd=cwd,
            env=onboard_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            if self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"exited {self.process.returncode} before {text!r}:\n" + "\n".join(self.lines))
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (x{count}) within {timeout} s:\n" + "\n".join(self.lines))
            time.sleep(0.1)

    def finish(self, timeout: float = 60) -> int:
        """The exit code, once the command ends by itself."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> int:
        """Ctrl-C, once, as a person stops it; the exit code (the kill's, if it did not end by itself)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=HANG_GUARD_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

"""The first Ctrl-C ends a command that talks to Service Bus, whatever the SDK's waits swallow.

The child process runs work that waits the way the Service Bus SDK does: its own code runs between
awaits (where a signal lands), then it enters asyncio.wait_for with what is left of a budget, which may
be spent, and takes a TimeoutError for time being up. asyncio.run's own Ctrl-C is lost in that pattern
(python/cpython issue 134471); the command must still end at once with its message and exit code 130.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.onboard_process import REPOSITORY, onboard_environment
from tests.waiting import HANG_GUARD_SECONDS

CHILD = """
import asyncio, time
import typer
from cli.plumbing import talk_to_servicebus
from shared.settings import ServiceBusSettings

async def wait_like_the_sdk() -> str:
    print("waiting", flush=True)
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + 60  # reaching it means the Ctrl-C was lost
    while loop.time() < stop_at:
        time.sleep(0.02)  # the SDK's own code between two awaits: where a signal handler runs
        try:
            await asyncio.wait_for(asyncio.sleep(1), timeout=1e-9)  # a receive budget just spent
        except TimeoutError:
            pass  # time is up for this receive: the SDK goes on to the next one
    return "went on waiting"

settings = ServiceBusSettings.model_validate({"ServiceBusConnection": "Endpoint=sb://localhost;"})
try:
    print(talk_to_servicebus(settings, wait_like_the_sdk(), interrupted=lambda: "Interrupted while waiting."))
except typer.Exit as stopped:
    raise SystemExit(stopped.exit_code)
"""


def test_the_first_ctrl_c_ends_a_wait_whose_library_swallows_the_cancellation() -> None:
    child = subprocess.Popen(  # noqa: S603  # our own interpreter and code
        [sys.executable, "-c", CHILD],
        cwd=REPOSITORY,
        env=onboard_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "waiting\n"
    child.send_signal(signal.SIGINT)  # once, as a person presses it
    try:
        out, err = child.communicate(timeout=HANG_GUARD_SECONDS)
    finally:
        child.kill()

    assert child.returncode == 130, out + err
    assert err.strip() == "Interrupted while waiting."
    assert out == ""

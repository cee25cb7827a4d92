"""What every `onboard` command shares: its consoles, one-line failures, settings, logging, and talking
to Service Bus without showing a person the SDK's traceback."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from azure.core.exceptions import AzureError
from azure.servicebus.exceptions import ServiceBusError  # an AzureError: caught first
from pydantic_settings import BaseSettings
from rich.console import Console

from cli.settings import SettingsProblem, load_settings
from shared.logs import install_safe_log_records, quiet_third_party_loggers
from shared.queues import DUPLICATE_WINDOW
from shared.settings import ServiceBusSettings

if TYPE_CHECKING:
    from azure.servicebus.aio import ServiceBusClient

DEFAULT_STATE_DIR = Path(".onboard")  # `onboard sandbox` keeps its SQLite files here
DUPLICATE_WINDOW_MINUTES = DUPLICATE_WINDOW // timedelta(minutes=1)
DUPLICATE_WINDOW_TEXT = f"{DUPLICATE_WINDOW_MINUTES}-minute"
# Records that report normal events as trouble: a client closing its AMQP connection (proton
# logs it at ERROR), and azure-functions' notice that a queue-only app has no HTTP auth level.
NORMAL_EVENTS = (
    "Couldn't send: ConnectionResetError",
    "Couldn't send: BrokenPipeError",
    "Auth level is not applied to non http function app",
)
# On a terminal the date and the logger's name are noise; the request id is what a person follows.
CONSOLE_FORMATTER = logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(message)s", datefmt="%H:%M:%S")

console = Console()
errors = Console(stderr=True)
T = TypeVar("T")
SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class _DropNormalEvents(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(event in message for event in NORMAL_EVENTS)


def configure_logging(verbose: bool, handler: logging.Handler | None = None) -> None:
    """The log of a command that runs the app or the stand-ins (host, sandbox, demo): one line each."""
    handler = handler or logging.StreamHandler(sys.stderr)
    handler.setFormatter(CONSOLE_FORMATTER)
    handler.addFilter(_DropNormalEvents())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    quiet_libraries()


def quiet_libraries() -> None:
    """For every command: addresses masked, and the libraries' own records kept from a person's terminal."""
    install_safe_log_records()
    # The AMQP and HTTP stacks are chatty at INFO, and so are the stand-ins' servers: warnings only.
    quiet_third_party_loggers()
    for noisy in ("uvicorn", "proton"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The Service Bus SDK logs each error it also raises (with a traceback, per link and retry): the
    # local host says once that Service Bus went away and once that it is back, and the commands
    # report an unreachable namespace themselves, in one line.
    logging.getLogger("azure.servicebus").setLevel(logging.CRITICAL)


def fail(message: str, code: int = 1) -> typer.Exit:
    """One line on stderr, for trouble a person can fix; the caller raises the returned Exit."""
    errors.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def settings_for(command: str, model: type[SettingsT], *first: type[BaseSettings]) -> SettingsT:
    """The settings `onboard COMMAND` needs, or exit 2 naming what is missing."""
    try:
        return load_settings(model, *first)
    except SettingsProblem as problem:
        raise fail(f"onboard {command}: {problem}", 2) from None


def write_or_print(output: Path | None, text: str) -> None:
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


class Interrupted(Exception):
    """Ctrl-C ended a command's work (its exit code is 130, as for any interrupted command)."""


# How often an interrupted command asks its work again to stop: a cancellation can be lost inside the
# Service Bus SDK (run_until_ctrl_c), and each new one is a new chance.
ASK_AGAIN_SECONDS = 1.0


async def _ended_by_ctrl_c(work: Coroutine[Any, Any, T]) -> T:
    if threading.current_thread() is not threading.main_thread():
        return await work  # signals reach only the main thread (and only there can a loop handle them)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    pressed = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, pressed.set)
    try:
        ctrl_c = asyncio.ensure_future(pressed.wait())
        try:
            await asyncio.wait({task, ctrl_c}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ctrl_c.cancel()
        if task.done():
            return task.result()
        # Cancelled from the loop, the work is suspended at an await, where asyncio.timeout lets the
        # cancellation through; asking again covers any the SDK still drops. Closing its links is all it does.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=ASK_AGAIN_SECONDS)
        if not task.cancelled():
            task.exception()  # whatever closing raised: Ctrl-C decides what the command says
        raise Interrupted
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def run_until_ctrl_c(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(work), ended by the first Ctrl-C (raising Interrupted) whatever the libraries swallow.

    asyncio.run's own Ctrl-C cancels the work from a signal handler, between two of its steps; if the
    work then enters asyncio.wait_for with a budget already spent (the Service Bus SDK does: a receive's
    max_wait_time, a link's deadline), Python's asyncio.timeout takes that cancellation for its own
    timeout and raises TimeoutError, which the SDK treats as time being up, and the command goes on
    waiting until a second Ctrl-C (python/cpython issue 134471). Our own handler runs in the loop instead:
    it cancels the work while it is suspended, and keeps asking until the work has ended."""
    return asyncio.run(_ended_by_ctrl_c(work))


def until_interrupted() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def talk_to_servicebus(
    settings: ServiceBusSettings, work: Coroutine[Any, Any, T], *, interrupted: Callable[[], str] | None = None
) -> T:
    """Run `work`; an unreachable or refusing namespace is one line, not the SDK's traceback.

    `interrupted` says what Ctrl-C leaves behind (default: "Interrupted."); a wait for outcomes that
    Service Bus ends says that the requests were sent and how to follow them (exit code 3: no outcome)."""
    from cli.following import StoppedWaiting, stopped_waiting
    from cli.upstream import namespace_of
    from shared.outbox import entity_not_found

    try:
        return run_until_ctrl_c(work)
    except StoppedWaiting as stopped:
        raise fail(stopped_waiting(stopped.request_ids, str(stopped), again=stopped.again), 3) from None
    except ServiceBusError as error:
        if entity_not_found(error):
            raise fail(
                f"A queue named here does not exist in {namespace_of(settings)} (Service Bus answered 404): "
                "check --reply-to and ONBOARDING_OUTCOME_QUEUE."
            ) from None
        raise fail(
            f"Could not reach Service Bus at {namespace_of(settings)} ({type(error).__name__}). "
            "Is `onboard sandbox` running, and does ServiceBusConnection name it?"
        ) from None
    except AzureError as error:  # signing in for ServiceBusConnection__fullyQualifiedNamespace
        raise fail(
            f"Could not sign in to Service Bus at {namespace_of(settings)} ({type(error).__name__}). "
            "Run `az login` with an account that has a Service Bus data role on the namespace."
        ) from None
    except (Interrupted, KeyboardInterrupt):  # KeyboardInterrupt: a Ctrl-C before the loop ran
        raise fail(interrupted() if interrupted else "Interrupted.", 130) from None


def with_servicebus(
    settings: ServiceBusSettings,
    work: Callable[[ServiceBusClient], Awaitable[T]],
    *,
    interrupted: Callable[[], str] | None = None,
) -> T:
    """`work` with a client of the namespace the settings name, failing as talk_to_servicebus does."""
    from cli.upstream import servicebus_client

    async def connected() -> T:
        async with servicebus_client(settings) as client:
            return await work(client)

    return talk_to_servicebus(settings, connected(), interrupted=interrupted)

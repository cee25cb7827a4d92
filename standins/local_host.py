"""A local stand-in for the Azure Functions host, for the Service Bus and timer triggers of function_app.py.

It discovers the triggers with `app.get_functions()`, receives from whatever namespace the
trigger's connection setting names (the emulator, or a real namespace in Azure) with the real
azure-servicebus SDK, and calls each function with the argument types the Azure host passes: an
azure.servicebus ServiceBusReceivedMessage and an object with ServiceBusMessageActions' methods
that settles through the SDK receiver. host.json's maxConcurrentCalls bounds the concurrency, and
locks are renewed while a function runs, up to maxAutoLockRenewalDuration.

A timer function runs on its NCRONTAB schedule (UTC, standins/ncrontab.py), never alongside itself,
as the host's storage lock keeps one run at a time across instances; `run_timer` runs one at once, as
the host's admin endpoint does (POST /admin/functions/<name>).

As in Azure, where the .NET host process receives, renews locks and settles while the Python worker
runs the functions, the Service Bus side runs on a thread and event loop of its own, and the
functions on the caller's event loop (the worker's). A function that holds its event loop (a slow
first import, CPU-bound work) delays the other invocations, as in Azure, but not lock renewal.

Service Bus going away (a broker restart, a network cut) ends the connection as a whole: the first
receiver or settlement that meets it gives it up for every queue at once, the invocations still
running on it are ended (cancelled: nothing they do can be settled any more, and their messages come
back when their locks expire), the host says so in one line, and one new connection is made after a
backoff (1 s doubling to 30 s). Without that, each receiver met the outage on its own, in-flight
invocations ran into dead links one by one, and an outage printed dozens of tracebacks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import inspect
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import azure.functions as func
from azure.functions.decorators.servicebus import ServiceBusQueueTrigger
from azure.functions.decorators.timer import TimerTrigger
from azure.functions.timer import TimerRequest
from azure.identity.aio import DefaultAzureCredential
from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import Header, Message
from azure.servicebus._pyamqp.types import TYPE, VALUE, AMQPTypes
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageNotFoundError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusError,
    SessionLockLostError,
)
from azurefunctions.extensions.base import Datum
from azurefunctions.extensions.bindings.servicebus import ServiceBusConverter
from azurefunctions.extensions.bindings.servicebus.serviceBusMessageActions import SettlementError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from standins.ncrontab import Schedule

logger = logging.getLogger("onboarding.local_host")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MAX_CONCURRENT_CALLS = 16  # the Functions Service Bus extension's default
RECONNECT_FIRST_DELAY_SECONDS = 1.0
RECONNECT_MAX_DELAY_SECONDS = 30.0
PAST_DUE = timedelta(seconds=1)  # a timer run this much later than its schedule says so (TimerRequest.past_due)
LINK_OPEN_TIMEOUT_SECONDS = 30.0
# How often an invocation the host ends is cancelled before it is left to run out (its result ignored).
ENDING_ROUNDS = 1000
# Closing a link or a client waits for the broker's answer; a broker that is gone never gives one.
CLOSE_TIMEOUT_SECONDS = 5.0
# A settlement that gets no answer (a link that never answers) ends, and gives the connection up.
SETTLEMENT_TIMEOUT_SECONDS = 60.0
# What a settlement may meet that concerns its message alone; any other Service Bus error means the
# link is gone (on a closed connection the SDK also raises "Handler failed: 'NoneType' object has no
# attribute ...", a plain ServiceBusError).
MESSAGE_ONLY = (MessageLockLostError, MessageNotFoundError, SessionLockLostError)
T = TypeVar("T")
RENEW_BEFORE_SECONDS = 10.0  # the SDK's AutoLockRenewer renews this long before a lock runs out
RENEWAL_TIMEOUT_SECONDS = 10.0  # a renewal the broker does not answer in this time is given up


@dataclass(frozen=True)
class QueueTrigger:
    function_name: str
    queue_name: str
    connection: str
    auto_complete: bool
    message_parameter: str
    actions_parameter: str | None
    user_function: Callable[..., Any]


@dataclass(frozen=True)
class TimerFunction:
    function_name: str
    schedule: Schedule
    parameter: str
    user_function: Callable[..., Any]


@functools.cache  # get_functions() refuses to run twice on one app ("not a unique function name")
def _functions(app: func.FunctionApp) -> tuple[Any, ...]:
    return tuple(app.get_functions())


def discover_triggers(app: func.FunctionApp) -> tuple[QueueTrigger, ...]:
    triggers = []
    for function in _functions(app):
        trigger = function.get_trigger()
        if not isinstance(trigger, ServiceBusQueueTrigger):
            continue
        user_function = function.get_user_function()
        triggers.append(
            QueueTrigger(
                function_name=function.get_function_name() or user_function.__name__,
                queue_name=trigger.queue_name,
                connection=trigger.connection,
                auto_complete=trigger.get_dict_repr().get("autoCompleteMessages", True) is not False,
                message_parameter=trigger.name,
                actions_parameter=_actions_parameter(user_function, trigger.name),
                user_function=user_function,
            )
        )
    return tuple(triggers)


def discover_timers(app: func.FunctionApp) -> tuple[TimerFunction, ...]:
    timers = []
    for function in _functions(app):
        trigger = function.get_trigger()
        if isinstance(trigger, TimerTrigger):
            user_function = function.get_user_function()
            name = function.get_function_name() or user_function.__name__
            timers.append(TimerFunction(name, Schedule.parse(trigger.schedule), trigger.name, user_function))
    return tuple(timers)


def _actions_parameter(user_function: Callable[..., Any], message_parameter: str) -> str | None:
    for name, parameter in inspect.signature(user_function).parameters.items():
        annotation = parameter.annotation
        annotation_name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if name != message_parameter and "ServiceBusMessageActions" in annotation_name:
            return name
    return None


def load_function_app(module_name: str = "function_app") -> func.FunctionApp:
    module = importlib.import_module(module_name)
    app = getattr(module, "app", None)
    if not isinstance(app, func.FunctionApp):
        raise RuntimeError(f"{module_name}.py defines no `app = func.FunctionApp()`")
    return app


class ServiceBusHostOptions(BaseModel):
    """host.json's extensions.serviceBus, as far as the local host honours it (defaults: the extension's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    max_concurrent_calls: int = Field(default=DEFAULT_MAX_CONCURRENT_CALLS, ge=1, alias="maxConcurrentCalls")
    max_auto_lock_renewal_duration: timedelta = Field(
        default=timedelta(minutes=5), ge=timedelta(0), alias="maxAutoLockRenewalDuration"
    )


# An app setting AzureFunctionsJobHost__extensions__serviceBus__<name> overrides host.json's value, as
# the Functions host reads it (docs/deploy.md, "Scale arithmetic"; the Bicep sets maxConcurrentCalls so).
HOST_JSON_OVERRIDE = "AzureFunctionsJobHost__extensions__serviceBus__"


def host_options(
    host_json: Path = PROJECT_ROOT / "host.json", environment: Mapping[str, str] | None = None
) -> ServiceBusHostOptions:
    """host.json's extensions.serviceBus, with the app settings that override it."""
    try:
        config = json.loads(host_json.read_text()).get("extensions", {}).get("serviceBus", {})
    except FileNotFoundError:
        config = {}
    overrides = {
        name.removeprefix(HOST_JSON_OVERRIDE): value
        for name, value in (os.environ if environment is None else environment).items()
        if name.startswith(HOST_JSON_OVERRIDE)
    }
    try:
        return ServiceBusHostOptions.model_validate(config | overrides)
    except ValidationError as error:
        source = f"{host_json} and {HOST_JSON_OVERRIDE}* app settings" if overrides else str(host_json)
        raise ValueError(f"{source}: extensions.serviceBus: {error}") from error


class LocalMessageActions:
    """ServiceBusMessageActions' methods as the Azure host answers them, settling through the SDK receiver.

    In Azure each call is a blocking gRPC call to the host, which looks the message up by lock token
    among the messages still in flight and raises SettlementError at once when settling fails
    (azurefunctions-extensions-bindings-servicebus 1.0.0b2, serviceBusMessageActions.py; the host's
    Grpc/SettlementService.cs in Azure/azure-sdk-for-net). Here each call runs the SDK's settlement on
    the host's event loop (`loop`, the receiver's) and waits for it, from the caller's thread. A call
    on `loop` or on `function_loop` (where the functions run) is refused.

    An invocation the host has ended (its `connection` lost, or found gone by a settlement) is
    cancelled, and a settlement it still asks for raises CancelledError, as any await of a cancelled
    task does, instead of a SettlementError it would report: it stops quietly, and its message comes
    back when its lock expires.
    """

    def __init__(
        self,
        receiver: ServiceBusReceiver,
        loop: asyncio.AbstractEventLoop,
        in_flight: Mapping[str, ServiceBusReceivedMessage],
        *,
        function_loop: asyncio.AbstractEventLoop | None = None,
        connection: HostConnection | None = None,
    ) -> None:
        self._receiver = receiver
        self._loop = loop
        self._refused_loops = {loop, function_loop or loop}
        self._in_flight = in_flight
        self._connection = connection
        self.settled = False  # a settlement was asked for (whether or not it succeeded)
        self.invocation: concurrent.futures.Future[bool] | None = None  # the function's run, once started
        self.ended = False  # the host ended the invocation: set on the host's loop, read by any thread

    def complete(self, message: ServiceBusReceivedMessage) -> None:
        self._settle("complete", message, self._receiver.complete_message)

    def abandon(self, message: ServiceBusReceivedMessage) -> None:
        self._settle("abandon", message, self._receiver.abandon_message)

    def deadletter(
        self,
        message: ServiceBusReceivedMessage,
        deadletter_reason: str | None = None,
        deadletter_error_description: str | None = None,
    ) -> None:
        dead_letter = functools.partial(
            self._receiver.dead_letter_message, reason=deadletter_reason, error_description=deadletter_error_description
        )
        self._settle("deadletter", message, dead_letter)

    def defer(self, message: ServiceBusReceivedMessage) -> None:
        self._settle("defer", message, self._receiver.defer_message)

    def _settle(
        self,
        method: str,
        message: ServiceBusReceivedMessage,
        settle: Callable[[ServiceBusReceivedMessage], Coroutine[Any, Any, None]],
    ) -> None:
        try:
            on_a_loop = asyncio.get_running_loop() in self._refused_loops
        except RuntimeError:
            on_a_loop = False
        if on_a_loop:
            # In Azure this call would block every concurrent invocation; on the host's loop it would deadlock.
            raise RuntimeError(
                f"ServiceBusMessageActions.{method} blocks until the host has settled: "
                f"call it off the event loop (await asyncio.to_thread(message_actions.{method}, message))"
            )
        self.settled = True
        token = str(message.lock_token)
        original = self._in_flight.get(token)  # the host removes it only after setting `ended`
        if original is None:
            self._unless_ended()
            # SettlementService answers FAILED_PRECONDITION for a lock token it does not hold.
            raise SettlementError(method, f"LockToken {token} not found.", KeyError(token))
        try:
            on_host = asyncio.run_coroutine_threadsafe(self._settle_on_host(settle, original), self._loop)
            on_host.result(timeout=SETTLEMENT_TIMEOUT_SECONDS + CLOSE_TIMEOUT_SECONDS)  # the host's own bound first
        except Exception as error:  # the SDK raises MessageAlreadySettled and lock errors alike
            self._unless_ended()
            raise SettlementError(method, type(error).__name__, error) from error

    def _unless_ended(self) -> None:
        if self.ended:
            raise asyncio.CancelledError("the host ended this invocation")

    async def _settle_on_host(
        self,
        settle: Callable[[ServiceBusReceivedMessage], Coroutine[Any, Any, None]],
        message: ServiceBusReceivedMessage,
    ) -> None:
        """On the host's loop, where the connection is given up and invocations are ended."""
        connection = self._connection
        if connection is not None and connection.lost:
            self.end()
            raise ServiceBusConnectionError(message="the connection the message came on is gone")
        try:
            try:
                await asyncio.wait_for(settle(message), SETTLEMENT_TIMEOUT_SECONDS)
            except TimeoutError:  # a link that never answers is as gone as a closed one
                raise OperationTimeoutError(message=f"no answer within {SETTLEMENT_TIMEOUT_SECONDS:.0f} s") from None
        except ServiceBusError as error:
            if connection is not None and not isinstance(error, MESSAGE_ONLY):
                connection.give_up(error)
                self.end()
            raise

    def end(self) -> None:
        """The host ends the invocation (on its loop): cancelled, and quiet from now on."""
        self.ended = True
        if self.invocation is not None:
            self.invocation.cancel()


def as_the_host_hands_it(message: ServiceBusReceivedMessage) -> ServiceBusReceivedMessage:
    """The message a function receives in Azure: the host's bytes decoded by the extension's own converter.

    The host (WebJobs.Extensions.ServiceBus, ServiceBusExtensionConfigProvider
    .ConvertReceivedMessageToBindingData) sends 16 lock-token bytes and the raw AMQP message whose header
    carries the .NET SDK's 1-based delivery count (AmqpMessageConverter adds 1 to the broker's count);
    azurefunctions-extensions-bindings-servicebus decodes it (utils.py get_decoded_message). Extension
    1.0.0b2 starts decoding after the lock-token annotation, so the header, and with it delivery_count
    and time_to_live, is lost: the function sees delivery_count None, as in Azure.
    """
    amqp: Any = message._message  # the SDK keeps the received pyamqp message here
    header = (amqp.header or Header())._replace(delivery_count=(message.delivery_count or 0) + 1)
    annotations = {
        key: {TYPE: AMQPTypes.timestamp if key in _TIMESTAMP_ANNOTATIONS else AMQPTypes.long, VALUE: value}
        if isinstance(value, int) and not isinstance(value, bool)
        else value
        for key, value in (amqp.message_annotations or {}).items()
    }
    header_section, rest = bytearray(), bytearray()
    encode_payload(header_section, Message(header=header))
    encode_payload(rest, amqp._replace(header=None, delivery_annotations=None, message_annotations=annotations))
    token = uuid.UUID(str(message.lock_token))
    content = token.bytes_le + bytes(header_section) + _lock_token_annotation(token) + bytes(rest)
    binding_data = SimpleNamespace(
        version="1.0",
        source="AzureServiceBusReceivedMessage",
        content_type="application/octet-stream",
        content=content,
    )
    decoded: ServiceBusReceivedMessage = ServiceBusConverter.decode(
        Datum(value=binding_data, type="model_binding_data"), trigger_metadata=None, pytype=None
    )
    return decoded


_TIMESTAMP_ANNOTATIONS = {b"x-opt-enqueued-time", b"x-opt-locked-until", b"x-opt-scheduled-enqueue-time"}


def _lock_token_annotation(token: uuid.UUID) -> bytes:
    """The delivery-annotations section {x-opt-lock-token: uuid} the host's bytes carry."""
    key = b"x-opt-lock-token"
    entries = bytes([0xA3, len(key)]) + key + b"\x98" + token.bytes  # sym8, then uuid
    body = bytes([2]) + entries  # two map elements: one key, one value
    return b"\x00\x53\x71\xc1" + bytes([len(body)]) + body  # described (smallulong 0x71), map8


class ConnectionWatch:
    """Says once that Service Bus went away and once that it is back, however many queues noticed."""

    def __init__(self) -> None:
        self._down_since: float | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def lost(self, error: ServiceBusError, ended: int = 0) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        # A wrong key or a missing queue will not heal by itself: that needs a person.
        needs_a_person = isinstance(
            error, ServiceBusAuthenticationError | ServiceBusAuthorizationError | MessagingEntityNotFoundError
        )
        logger.log(
            logging.ERROR if needs_a_person else logging.WARNING,
            "Service Bus is unreachable (%s: %s); reconnecting with backoff (at most every %.0f s)%s",
            type(error).__name__,
            _what_happened(error),
            RECONNECT_MAX_DELAY_SECONDS,
            f"; {ended} invocation(s) in flight ended, their messages come back when their locks expire"
            if ended
            else "",
        )

    def restored(self) -> None:
        if self._down_since is None:
            return
        logger.warning("reconnected to Service Bus after %.0f s", time.monotonic() - self._down_since)
        self._down_since = None


def _what_happened(error: ServiceBusError) -> str:
    # On a connection closed under it the SDK fails on its own state ("Handler failed: 'NoneType'
    # object has no attribute ..."), which tells a person nothing.
    if type(error) is ServiceBusError and str(error).startswith("Handler failed"):
        return "the connection closed under a running operation"
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = (str(error).splitlines() or [""])[0]
    return text if len(text) <= 160 else text[:157] + "..."


class HostConnection:
    """One connection to Service Bus, on the host's loop: given up as a whole, once, when any receiver or
    settlement finds it gone, however many queues notice."""

    def __init__(self) -> None:
        self._lost = asyncio.Event()
        self.error: ServiceBusError | None = None
        self.answered = False  # Service Bus answered a receive on it

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def give_up(self, error: ServiceBusError) -> None:
        if self.error is None:
            self.error = error
        self._lost.set()

    async def unless_lost(self, work: Awaitable[T]) -> T | None:
        """`work`'s result, or None (the work cancelled) as soon as the connection is lost."""
        working = asyncio.ensure_future(work)
        watching = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({working, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
        if working.done():
            return working.result()
        working.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await working
        return None


class LocalHost:
    def __init__(
        self,
        app: func.FunctionApp,
        *,
        environment: Mapping[str, str] = os.environ,
        concurrency: int | None = None,
        receive_wait_seconds: float = 1.0,
    ) -> None:
        self._triggers = discover_triggers(app)
        self._timers = {timer.function_name: timer for timer in discover_timers(app)}
        if not self._triggers and not self._timers:
            raise RuntimeError("the function app has no Service Bus or timer triggers")
        self._timer_locks: dict[str, asyncio.Lock] = {}
        self._environment = environment
        self._options = host_options(environment=environment)
        self._concurrency = concurrency or self._options.max_concurrent_calls
        self._receive_wait = receive_wait_seconds
        self._watch = ConnectionWatch()
        self.invocations = 0  # messages handed to queue-triggered functions (redeliveries too)
        self.timer_runs = 0  # timer functions run: apart, so a schedule that fires mid-test changes no count
        self._in_flight: dict[str, ServiceBusReceivedMessage] = {}

    @property
    def triggers(self) -> list[QueueTrigger]:
        return list(self._triggers)

    @property
    def timers(self) -> list[TimerFunction]:
        return list(self._timers.values())

    async def run_timer(self, function_name: str, *, past_due: bool = False) -> None:
        """Run a timer function now, on the caller's loop (the worker's), once any run of it has ended;
        a failure is logged, as the host does (a timer function is not retried)."""
        timer = self._timers[function_name]
        lock = self._timer_locks.setdefault(function_name, asyncio.Lock())
        async with lock:
            self.timer_runs += 1
            try:
                result = timer.user_function(**{timer.parameter: TimerRequest(past_due=past_due)})
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("function %s failed", function_name)

    async def _on_schedule(self, timer: TimerFunction, stop: asyncio.Event) -> None:
        logger.info("function %s runs on schedule %r (UTC)", timer.function_name, timer.schedule.expression)
        while not stop.is_set():
            due = timer.schedule.next_after(datetime.now(UTC))
            try:
                await asyncio.wait_for(stop.wait(), max((due - datetime.now(UTC)).total_seconds(), 0))
            except TimeoutError:
                await self.run_timer(timer.function_name, past_due=datetime.now(UTC) - due > PAST_DUE)

    @property
    def in_flight(self) -> int:
        """Invocations running now: what stopping waits for."""
        return len(self._in_flight)

    def _client(self, connection: str) -> ServiceBusClient:
        # No retries of the SDK's own: they would hide a lost connection for seconds, while in-flight
        # invocations run into it one by one. The host's reconnection loop is the retry.
        connection_string = self._environment.get(connection)
        if connection_string:
            return ServiceBusClient.from_connection_string(connection_string, retry_total=0)
        namespace = self._environment.get(f"{connection}__fullyQualifiedNamespace")
        if namespace:
            return ServiceBusClient(namespace, DefaultAzureCredential(), retry_total=0)
        raise RuntimeError(
            f"connection {connection!r}: set {connection} (connection string) or "
            f"{connection}__fullyQualifiedNamespace (identity-based)"
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Receive and invoke until `stop` is set; then finish in-flight invocations and close.

        The functions run on this event loop; receiving, lock renewal and settlement on the host's own
        loop in a thread (the module docstring says why).
        """
        function_loop = asyncio.get_running_loop()
        host_loop = asyncio.new_event_loop()
        host_stop = asyncio.Event()  # set and awaited on the host's loop only

        def host() -> None:
            try:
                host_loop.run_until_complete(self._serve(function_loop, host_stop))
            finally:
                host_loop.run_until_complete(host_loop.shutdown_asyncgens())
                host_loop.close()

        hosting = asyncio.ensure_future(asyncio.to_thread(host))
        stopping = asyncio.ensure_future(stop.wait())
        timers_stop = asyncio.Event()
        ticking = [asyncio.create_task(self._on_schedule(timer, timers_stop)) for timer in self._timers.values()]
        try:
            await asyncio.wait({hosting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            timers_stop.set()  # a timer function that is running finishes first
            with contextlib.suppress(RuntimeError):  # the host's loop already ended (it failed)
                host_loop.call_soon_threadsafe(host_stop.set)
            await asyncio.gather(*ticking)
            await hosting  # in-flight invocations finish on this loop meanwhile

    async def _serve(self, function_loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        """On the host's loop: one connection after another until `stop`, with backoff in between, as
        the Functions host's Service Bus listeners keep receiving after errors instead of stopping the app."""
        for trigger in self._triggers:
            logger.info("listening on queue %s for function %s", trigger.queue_name, trigger.function_name)
        failures = 0
        while not stop.is_set():
            connection = HostConnection()
            ended = await self._receive(connection, function_loop, stop)
            if connection.error is None:
                return  # stopped
            failures = 1 if connection.answered else failures + 1
            self._watch.lost(connection.error, ended)
            delay = min(RECONNECT_FIRST_DELAY_SECONDS * 2 ** (failures - 1), RECONNECT_MAX_DELAY_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _receive(
        self, connection: HostConnection, function_loop: asyncio.AbstractEventLoop, stop: asyncio.Event
    ) -> int:
        """A receiver per trigger on one connection until `stop` or the connection is lost; how many
        in-flight invocations a lost connection ended."""
        clients: dict[str, ServiceBusClient] = {}
        try:
            for trigger in self._triggers:
                clients.setdefault(trigger.connection, self._client(trigger.connection))
            async with asyncio.TaskGroup() as group:  # a pump that fails unexpectedly stops the others
                pumps = [
                    group.create_task(self._pump(trigger, clients[trigger.connection], connection, stop, function_loop))
                    for trigger in self._triggers
                ]
            if not self._triggers:
                await stop.wait()  # an app of timers alone: the host runs until it is stopped all the same
            return sum(pump.result() for pump in pumps)
        finally:
            await asyncio.gather(*(_quietly(client.close()) for client in clients.values()))

    async def _pump(
        self,
        trigger: QueueTrigger,
        client: ServiceBusClient,
        connection: HostConnection,
        stop: asyncio.Event,
        function_loop: asyncio.AbstractEventLoop,
    ) -> int:
        """Receive until `stop` (then let in-flight invocations finish) or until the connection is lost
        (then end them); how many it ended."""
        receiver = client.get_queue_receiver(trigger.queue_name)
        # A sliding window, as the host's processor keeps maxConcurrentCalls handler calls going
        # (docs/functions-host.md): a free slot is filled at once, not when the slowest message of a
        # batch has finished. One message per receive: the SDK keeps pulling for 200 ms after the first
        # message of a larger batch, which the host's processor (one receive per free slot) does not.
        running: set[asyncio.Task[None]] = set()
        try:
            try:
                # Opened first, without the receive's short wait as its deadline, which a busy machine can miss.
                await connection.unless_lost(_opened(receiver))
            except ServiceBusError as error:
                connection.give_up(error)
            while not (stop.is_set() or connection.lost):
                if len(running) >= self._concurrency:
                    await connection.unless_lost(asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED))
                    continue
                try:
                    messages = await connection.unless_lost(
                        receiver.receive_messages(max_message_count=1, max_wait_time=self._receive_wait)
                    )
                except ServiceBusError as error:
                    connection.give_up(error)
                    break
                if messages is None:
                    break  # another receiver found the connection gone
                connection.answered = True
                self._watch.restored()
                for message in messages:
                    invocation = self._invoke(trigger, receiver, message, connection, function_loop)
                    task = asyncio.create_task(invocation)
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            ended = len(running) if connection.lost else 0
            if connection.lost:
                for task in running:
                    task.cancel()  # nothing they do can be settled now
            # On a stop, invocations finish and settle on this receiver before it closes.
            await asyncio.gather(*running, return_exceptions=True)
            await _quietly(receiver.close())
        return ended

    async def _invoke(
        self,
        trigger: QueueTrigger,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
        connection: HostConnection,
        function_loop: asyncio.AbstractEventLoop,
    ) -> None:
        # As the Functions host does, the lock is renewed while the function runs (maxAutoLockRenewalDuration).
        renewing = asyncio.create_task(self._keep_locked(receiver, message))
        token = str(message.lock_token)
        self._in_flight[token] = message  # as the host's ActionsCache: settleable while the function runs
        actions = LocalMessageActions(
            receiver, asyncio.get_running_loop(), self._in_flight, function_loop=function_loop, connection=connection
        )
        arguments: dict[str, Any] = {trigger.message_parameter: as_the_host_hands_it(message)}
        if trigger.actions_parameter:
            arguments[trigger.actions_parameter] = actions
        self.invocations += 1
        try:
            actions.invocation = asyncio.run_coroutine_threadsafe(_call(trigger, arguments), function_loop)
            failed = await asyncio.wrap_future(actions.invocation)
        except asyncio.CancelledError:
            actions.end()  # before its lock token goes: a settlement still asked for then ends quietly
            raise
        finally:
            del self._in_flight[token]
            renewing.cancel()
        if failed and (trigger.auto_complete or not actions.settled):
            await _settle_quietly(receiver.abandon_message(message))
        elif not failed and trigger.auto_complete:
            await _settle_quietly(receiver.complete_message(message))

    async def _keep_locked(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage) -> None:
        """Renew the message's lock shortly before it runs out, until cancelled or for at most
        maxAutoLockRenewalDuration, each renewal bounded in time. (The SDK's AutoLockRenewer waits for
        a renewal's answer without end, busy on the host's loop: a broker that went away mid-renewal
        stopped the whole host.) A renewal that fails ends the renewing; the lock then runs out and
        Service Bus delivers the message again, as after any lost lock."""
        until = time.monotonic() + self._options.max_auto_lock_renewal_duration.total_seconds()
        while True:
            left = (message.locked_until_utc - datetime.now(UTC)).total_seconds() if message.locked_until_utc else 0.0
            # The SDK's timing: RENEW_BEFORE_SECONDS before expiry, or at a quarter of what is left of a shorter lock.
            wait = left - RENEW_BEFORE_SECONDS if left > RENEW_BEFORE_SECONDS + 0.5 else left / 4
            if time.monotonic() + wait >= until:
                return
            await asyncio.sleep(max(wait, 0.0))
            try:
                await receiver.renew_message_lock(message, timeout=RENEWAL_TIMEOUT_SECONDS)
            except Exception as error:  # the SDK raises lock, connection and timeout errors alike
                logger.debug("lock renewal ended: %s", type(error).__name__)
                return


async def _call(trigger: QueueTrigger, arguments: dict[str, Any]) -> bool:
    """On the worker's (the caller's) loop: the function, and whether it failed. Cancelled (the host
    ended the invocation), it ends quietly."""
    ended = False

    async def function() -> bool:
        try:
            result = trigger.user_function(**arguments)
            if inspect.isawaitable(result):
                await result
        except ServiceBusError as error:  # the app could not reach Service Bus: its message comes back
            if not ended:
                logger.warning("function %s failed: %s", trigger.function_name, (str(error).splitlines() or [""])[0])
            return True
        except Exception:
            if not ended:
                logger.exception("function %s failed", trigger.function_name)
            return True
        return False

    running = asyncio.ensure_future(function())
    try:
        return await running
    except asyncio.CancelledError:
        ended = True
        await _end(running)
        raise


async def _end(running: asyncio.Future[bool]) -> None:
    """Cancel `running` until it ends. One cancellation can be lost on the way: Python 3.11's
    asyncio.wait_for, which the SDK's AMQP layer awaits in, returns an inner result that is already
    there instead of raising the cancellation; a second one meets the next await."""
    for _ in range(ENDING_ROUNDS):
        if running.done():
            return
        running.cancel()
        await asyncio.sleep(0)  # one step of `running`, then the next cancellation


async def _opened(receiver: ServiceBusReceiver) -> None:
    """The link of `receiver`, opened as `async with receiver` opens it (its exit would close it
    unbounded, which a broker that is gone may never answer)."""
    try:
        await asyncio.wait_for(receiver.__aenter__(), LINK_OPEN_TIMEOUT_SECONDS)
    except TimeoutError:
        raise OperationTimeoutError(message=f"no link within {LINK_OPEN_TIMEOUT_SECONDS:.0f} s") from None


async def _quietly(closing: Awaitable[None]) -> None:
    """Close a link or client; a broker that is gone answers neither quickly nor at all."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closing, CLOSE_TIMEOUT_SECONDS)


async def _settle_quietly(settlement: Coroutine[Any, Any, None]) -> None:
    """The host's own settlement after the function's: the message may already be settled."""
    try:
        await settlement
    except Exception as error:  # the SDK raises MessageAlreadySettled and lock errors alike
        logger.debug("host settlement skipped: %s", error)

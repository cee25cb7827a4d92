"""The local host finds function_app.py's triggers as the Functions host would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus
import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import OperationTimeoutError
from azurefunctions.extensions.bindings.servicebus.serviceBusMessageActions import SettlementError

from functions.triggers import DEAD_LETTER_SWEEP_FUNCTION, DEAD_LETTER_SWEEP_SCHEDULE, DRIFT_SWEEP_FUNCTION
from shared.queues import DEFAULT_DRIFT_SCHEDULE
from standins.local_host import (
    RENEWAL_TIMEOUT_SECONDS,
    LocalHost,
    LocalMessageActions,
    as_the_host_hands_it,
    discover_timers,
    discover_triggers,
    host_options,
)
from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator
from tests.fixtures.pipeline import indexed_app
from tests.waiting import HANG_GUARD_SECONDS

Handler = Callable[[servicebus.ServiceBusReceivedMessage, servicebus.ServiceBusMessageActions], Awaitable[None]]


def _app_on_create_contact(handle: Handler) -> func.FunctionApp:
    """An app of one explicitly settled function on create-contact, bound as function_app.py binds its own."""
    app = func.FunctionApp()
    app.service_bus_queue_trigger(
        arg_name="message", queue_name="create-contact", connection="Bus", auto_complete_messages=False
    )(handle)
    return app


def test_discovers_one_explicitly_settled_trigger_per_stage_and_the_doctors() -> None:
    triggers = {t.queue_name: t for t in discover_triggers(indexed_app())}
    # none on a dead-letter sub-queue: a timer sweeps those
    assert set(triggers) == {"create-contact", "add-member", "verify-delivery", "doctor", "leases", "drift"}
    for trigger in triggers.values():
        assert trigger.connection == "ServiceBusConnection"
        assert trigger.auto_complete is False
        assert trigger.message_parameter == "message"
        assert trigger.actions_parameter == "message_actions"
        assert trigger.function_name == trigger.queue_name.replace("-", "_")
    timers = {timer.function_name: timer.schedule.expression for timer in discover_timers(indexed_app())}
    assert timers == {
        DEAD_LETTER_SWEEP_FUNCTION: DEAD_LETTER_SWEEP_SCHEDULE,
        DRIFT_SWEEP_FUNCTION: DEFAULT_DRIFT_SCHEDULE,
    }


@pytest.mark.stack
async def test_a_timer_function_runs_on_its_schedule_and_when_asked() -> None:
    app = func.FunctionApp()
    runs: list[str] = []
    three = asyncio.Event()

    @app.timer_trigger(arg_name="timer", schedule="* * * * * *")  # every second
    async def every_second(timer: func.TimerRequest) -> None:
        runs.append("asked" if not runs else "scheduled")
        if len(runs) == 3:
            three.set()

    host = LocalHost(app, environment={})
    stop = asyncio.Event()
    hosting = asyncio.create_task(host.run(stop))
    await host.run_timer("every_second")  # as the host's admin endpoint runs a function
    async with asyncio.timeout(20):
        await three.wait()
    stop.set()
    await hosting
    assert runs[:3] == ["asked", "scheduled", "scheduled"]


def test_concurrency_and_lock_renewal_come_from_host_json(tmp_path: Path) -> None:
    service_bus = json.loads(Path("host.json").read_text())["extensions"]["serviceBus"]
    options = host_options(environment={})
    assert options.max_concurrent_calls == service_bus["maxConcurrentCalls"]
    assert options.max_auto_lock_renewal_duration == timedelta(minutes=5)
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"extensions": {"serviceBus": {"maxConcurrentCalls": 0}}}))
    with pytest.raises(ValueError, match="maxConcurrentCalls"):
        host_options(host_json)
    host_json.write_text(json.dumps({"extensions": {"serviceBus": {"maxAutoLockRenewalDuration": "soon"}}}))
    with pytest.raises(ValueError, match="maxAutoLockRenewalDuration"):
        host_options(host_json)
    defaults = host_options(tmp_path / "absent.json", environment={})
    assert (defaults.max_concurrent_calls, defaults.max_auto_lock_renewal_duration) == (16, timedelta(minutes=5))


def test_an_app_setting_overrides_host_json_as_in_azure() -> None:
    """The Bicep sets maxConcurrentCalls per deployment as AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls."""
    overridden = host_options(environment={"AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls": "2"})
    assert overridden.max_concurrent_calls == 2
    assert overridden.max_auto_lock_renewal_duration == host_options(environment={}).max_auto_lock_renewal_duration
    refused = {"AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls": "none"}
    with pytest.raises(ValueError, match="app settings"):
        host_options(environment=refused)


@pytest.mark.stack
async def test_a_function_gets_the_message_as_the_azure_host_hands_it_and_settles_blocking(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    async with (
        ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client,
        client.get_queue_receiver("create-contact") as receiver,
    ):
        async with client.get_queue_sender("create-contact") as sender:
            await sender.send_messages(
                ServiceBusMessage(
                    b'{"a": 1}', message_id="m-1", correlation_id="c-1", reply_to="r", application_properties={"k": 2}
                )
            )
        (received,) = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
        handed = as_the_host_hands_it(received)
        got = (handed.message_id, handed.correlation_id, handed.reply_to, handed.application_properties)
        assert got == ("m-1", "c-1", "r", {b"k": 2})
        assert (b"".join(handed.body), handed.sequence_number, handed.lock_token) == (
            b'{"a": 1}',
            received.sequence_number,
            received.lock_token,
        )
        # The SDK reads AMQP's count (0 on a first delivery); extension 1.0.0b2 drops the header the host sends.
        assert (received.delivery_count, handed.delivery_count) == (0, None)

        actions = LocalMessageActions(receiver, asyncio.get_running_loop(), {str(received.lock_token): received})
        with pytest.raises(RuntimeError, match=r"asyncio\.to_thread"):
            actions.complete(handed)  # on the event loop it would block every invocation (here: deadlock)
        await asyncio.to_thread(actions.complete, handed)
        with pytest.raises(SettlementError, match="MessageAlreadySettled"):
            await asyncio.to_thread(actions.complete, handed)
        gone = LocalMessageActions(receiver, asyncio.get_running_loop(), {})
        with pytest.raises(SettlementError, match="not found"):
            await asyncio.to_thread(gone.abandon, handed)  # the host holds no lock token once the function returned


@pytest.mark.stack
async def test_a_free_slot_is_filled_while_a_slow_invocation_still_runs(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    """The host's processor keeps maxConcurrentCalls handler calls going (docs/functions-host.md): one
    slow message must not hold back the next ones, as a receive-a-batch-then-wait loop would."""
    release_slow = asyncio.Event()
    all_fast_done = asyncio.Event()
    fast_done: list[str] = []

    async def handle(
        message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
    ) -> None:
        if message.message_id == "slow":
            await release_slow.wait()
        else:
            fast_done.append(str(message.message_id))
            if len(fast_done) == 6:
                all_fast_done.set()
        await asyncio.to_thread(message_actions.complete, message)

    app = _app_on_create_contact(handle)
    host = LocalHost(app, environment={"Bus": servicebus_emulator.connection_string}, concurrency=3)
    stop = asyncio.Event()
    running = asyncio.create_task(host.run(stop))
    try:
        async with ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client:
            async with client.get_queue_sender("create-contact") as sender:
                await sender.send_messages(ServiceBusMessage(b"{}", message_id="slow"))
                await sender.send_messages([ServiceBusMessage(b"{}", message_id=f"fast-{n}") for n in range(6)])
        await asyncio.wait_for(all_fast_done.wait(), 20)
        assert not release_slow.is_set()  # all six passed the slow one, three slots wide
    finally:
        release_slow.set()
        stop.set()
        await running
    assert host.invocations == 7


@pytest.mark.stack
async def test_a_function_that_holds_its_event_loop_past_the_lock_keeps_the_lock(
    start_emulator: Callable[[EmulatorConfig], ServiceBusEmulator],
) -> None:
    """In Azure the .NET host renews locks, so a worker whose event loop is held (a first Graph answer
    imports about 1,200 model modules on the loop) loses no lock; the local host renews on its own loop."""
    emulator = start_emulator(EmulatorConfig.default().with_overrides(lock_duration=timedelta(seconds=5)))
    done = asyncio.Event()

    async def handle(
        message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
    ) -> None:
        time.sleep(7)  # noqa: ASYNC251  # holds the event loop past the 5-second lock, on purpose
        await asyncio.to_thread(message_actions.complete, message)
        done.set()

    host = LocalHost(_app_on_create_contact(handle), environment={"Bus": emulator.connection_string})
    stop = asyncio.Event()
    running = asyncio.create_task(host.run(stop))
    try:
        async with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
            async with client.get_queue_sender("create-contact") as sender:
                await sender.send_messages(ServiceBusMessage(b"{}", message_id="held"))
            await asyncio.wait_for(done.wait(), 20)
            await asyncio.sleep(1)  # a redelivery, had the lock expired, would start now
            async with client.get_queue_receiver("create-contact") as receiver:
                assert await receiver.peek_messages(max_message_count=1) == []  # completed, not lock-lost
    finally:
        stop.set()
        await running
    assert host.invocations == 1


async def test_each_lock_renewal_is_bounded_in_time_and_a_failed_one_ends_the_renewing() -> None:
    """The SDK's AutoLockRenewer renews without a timeout: a renewal the broker never answered (restarted
    mid-request) kept the SDK looping on the host's loop for good. Each renewal now carries a timeout."""
    timeouts: list[float | None] = []

    class Receiver:
        async def renew_message_lock(self, message: SimpleNamespace, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the SDK's signature
            timeouts.append(timeout)
            if len(timeouts) == 2:
                raise OperationTimeoutError(message="no answer")
            message.locked_until_utc = datetime.now(UTC) + timedelta(seconds=0.2)

    message = SimpleNamespace(locked_until_utc=datetime.now(UTC) + timedelta(seconds=0.2))
    host = LocalHost(indexed_app(), environment={})
    await asyncio.wait_for(host._keep_locked(Receiver(), message), timeout=HANG_GUARD_SECONDS)  # type: ignore[arg-type]
    assert timeouts == [RENEWAL_TIMEOUT_SECONDS, RENEWAL_TIMEOUT_SECONDS]

"""Every trigger of the app: one per stage queue, in the pipeline's order (shared/queues.py, PIPELINE),
one for each source's own intake queue, if any, a timer that sweeps their dead-letter sub-queues (and
leases past their end), one on the `doctor` queue, where `onboard doctor` asks the app for its self-check
(shared/selfcheck.py), one on the `leases` queue, where leases' scheduled wake-ups arrive
(shared/lease_watch.py), and the drift watch's timer, which starts a period's sweep, and its trigger on
queue `drift` (docs/drift.md).

Thin by design. A stage's function hands its message to the runner (shared/runner.py), which
decodes it, calls the stage in shared/stages/ and carries out its decision. The sweep
(shared/dead_letters.py) peeks every dead-letter sub-queue and publishes the outcome of what Service
Bus dead-lettered by itself, leaving each dead letter where it is, for operators. A timer, not a
trigger on each sub-queue: the scaler would size such a trigger by dead letters that stay there
(docs/service-bus-facts.md, "Scaling a trigger on a dead-letter sub-queue").

One function makes every queue trigger: the host needs a distinct named function for each, and the
worker reads the handler's annotations to bind the SDK message type.
"""

import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from functions.invoke import (
    answer_self_check,
    run_stage,
    start_drift_sweep,
    sweep_dead_letters,
    watch_drift,
    watch_lease,
)
from shared.queues import (
    DRIFT_QUEUE,
    LEASE_QUEUE,
    PIPELINE,
    SELF_CHECK_QUEUE,
    SERVICEBUS_CONNECTION,
    StageName,
    drift_schedule,
    intake_queues,
)

# NCRONTAB (second minute hour day month day-of-week), UTC: every five minutes. An outcome for what Service
# Bus dead-lettered by itself may wait that long; such a message has already waited out every delivery.
DEAD_LETTER_SWEEP_SCHEDULE = "0 */5 * * * *"
DEAD_LETTER_SWEEP_FUNCTION = "dead_letter_sweep"
DRIFT_SWEEP_FUNCTION = "drift_sweep"

Handler = Callable[[servicebus.ServiceBusReceivedMessage, servicebus.ServiceBusMessageActions], Awaitable[None]]


def _trigger(bp: func.Blueprint, queue: str, function_name: str, call: Handler) -> None:
    async def handle(
        message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
    ) -> None:
        await call(message, message_actions)

    handle.__name__ = handle.__qualname__ = function_name  # the host names a function after its handler
    bp.service_bus_queue_trigger(
        arg_name="message", queue_name=queue, connection=SERVICEBUS_CONNECTION, auto_complete_messages=False
    )(handle)


def swept_queues(settings: Mapping[str, str] = os.environ) -> dict[str, StageName]:
    """Each queue whose dead letters the sweep reports, and the stage that reads it: the stage queues and
    a source's own intake queues (ONBOARDING_INTAKE_QUEUES), which create-contact reads like its own."""
    return {stage.value: stage for stage in PIPELINE} | dict.fromkeys(intake_queues(settings), StageName.CREATE_CONTACT)


def blueprint(settings: Mapping[str, str] = os.environ) -> func.Blueprint:
    """Every trigger, for the intake queues the settings name (read when the host indexes the app)."""
    bp = func.Blueprint()
    swept = swept_queues(settings)
    for queue, stage in swept.items():
        if queue == stage.value:
            _trigger(bp, queue, stage.value.replace("-", "_"), partial(run_stage, stage))
        else:
            name = "create_contact_from_" + queue.replace("-", "_").replace(".", "_")
            _trigger(bp, queue, name, partial(run_stage, stage, intake=queue))

    async def sweep(timer: func.TimerRequest) -> None:
        await sweep_dead_letters(swept)

    sweep.__name__ = sweep.__qualname__ = DEAD_LETTER_SWEEP_FUNCTION
    bp.timer_trigger(arg_name="timer", schedule=DEAD_LETTER_SWEEP_SCHEDULE, run_on_startup=False)(sweep)
    _trigger(bp, SELF_CHECK_QUEUE, "doctor", answer_self_check)
    _trigger(bp, LEASE_QUEUE, "leases", watch_lease)  # wake-ups of leases (shared/lease_watch.py)

    async def drift_sweep(timer: func.TimerRequest) -> None:
        await start_drift_sweep()

    drift_sweep.__name__ = drift_sweep.__qualname__ = DRIFT_SWEEP_FUNCTION
    bp.timer_trigger(arg_name="timer", schedule=drift_schedule(settings), run_on_startup=False)(drift_sweep)
    _trigger(bp, DRIFT_QUEUE, "drift", watch_drift)  # the sweep's pages and checks (shared/drift/watch.py)
    return bp

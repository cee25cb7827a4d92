"""Every trigger of the app: one per stage queue, in the pipeline's order (shared/queues.py, PIPELINE),
one per stage's dead-letter sub-queue, the same two for each source's own intake queue, if any, and
one on the `doctor` queue, where `onboard doctor` asks the app for its self-check (shared/selfcheck.py),
and one on the `leases` queue, where leases' scheduled wake-ups arrive (shared/lease_watch.py).

Thin by design. A stage's function hands its message to the runner (shared/runner.py), which
decodes it, calls the stage in shared/stages/ and carries out its decision. A dead-letter
function hands it to shared/dead_letters.py, which publishes the outcome of what Service Bus
dead-lettered by itself; a message the pipeline dead-lettered itself (it already published the
outcome) is only deferred, so it stays in the queue for operators.

One function makes every trigger: the host needs a distinct named function for each, and the
worker reads the handler's annotations to bind the SDK message type.
"""

import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from functions.invoke import answer_self_check, report_dead_letter, run_stage, watch_lease
from shared.queues import LEASE_QUEUE, PIPELINE, SELF_CHECK_QUEUE, SERVICEBUS_CONNECTION, StageName, intake_queues

DEAD_LETTER_QUEUE = "{queue}/$deadletterqueue"  # Service Bus's path of a queue's dead-letter sub-queue

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


def blueprint(settings: Mapping[str, str] = os.environ) -> func.Blueprint:
    """Every trigger, for the intake queues the settings name (read when the host indexes the app)."""
    bp = func.Blueprint()
    for stage in PIPELINE:
        name = stage.value.replace("-", "_")  # create_contact, add_member, verify_delivery
        _trigger(bp, stage.value, name, partial(run_stage, stage))
        _trigger(
            bp, DEAD_LETTER_QUEUE.format(queue=stage.value), f"{name}_dead_letters", partial(report_dead_letter, stage)
        )
    # A source's own intake queue (ONBOARDING_INTAKE_QUEUES) is read by create-contact like the shared one.
    for queue in intake_queues(settings):
        name = "create_contact_from_" + queue.replace("-", "_").replace(".", "_")
        _trigger(bp, queue, name, partial(run_stage, StageName.CREATE_CONTACT, intake=queue))
        dead_letters = DEAD_LETTER_QUEUE.format(queue=queue)
        _trigger(bp, dead_letters, f"{name}_dead_letters", partial(report_dead_letter, StageName.CREATE_CONTACT))
    _trigger(bp, SELF_CHECK_QUEUE, "doctor", answer_self_check)
    _trigger(bp, LEASE_QUEUE, "leases", watch_lease)  # wake-ups of leases (shared/lease_watch.py)
    return bp

"""Every trigger of the app: one per stage queue, in the pipeline's order (shared/queues.py, PIPELINE),
and one per stage's dead-letter sub-queue.

Thin by design. A stage's function hands its message to the runner (shared/runner.py), which
decodes it, calls the stage in shared/stages/ and carries out its decision. A dead-letter
function hands it to shared/dead_letters.py, which publishes the outcome of what Service Bus
dead-lettered by itself; a message the pipeline dead-lettered itself (it already published the
outcome) is only deferred, so it stays in the queue for operators.

One function makes every trigger: the host needs a distinct named function for each, and the
worker reads the handler's annotations to bind the SDK message type.
"""

from collections.abc import Awaitable, Callable
from functools import partial

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from functions.invoke import report_dead_letter, run_stage
from shared.queues import PIPELINE, SERVICEBUS_CONNECTION

bp = func.Blueprint()
DEAD_LETTER_QUEUE = "{queue}/$deadletterqueue"  # Service Bus's path of a queue's dead-letter sub-queue

Handler = Callable[[servicebus.ServiceBusReceivedMessage, servicebus.ServiceBusMessageActions], Awaitable[None]]


def _trigger(queue: str, function_name: str, call: Handler) -> None:
    async def handle(
        message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
    ) -> None:
        await call(message, message_actions)

    handle.__name__ = handle.__qualname__ = function_name  # the host names a function after its handler
    bp.service_bus_queue_trigger(
        arg_name="message", queue_name=queue, connection=SERVICEBUS_CONNECTION, auto_complete_messages=False
    )(handle)


for _stage in PIPELINE:
    _name = _stage.value.replace("-", "_")  # create_contact, add_member, verify_delivery
    _trigger(_stage.value, _name, partial(run_stage, _stage))
    _trigger(DEAD_LETTER_QUEUE.format(queue=_stage.value), f"{_name}_dead_letters", partial(report_dead_letter, _stage))

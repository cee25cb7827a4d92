"""The dead-letter sub-queues: an outcome for what Service Bus dead-lettered by itself.

Thin by design: shared/dead_letters.py decides; a message the pipeline dead-lettered itself
(it already published the outcome) is only deferred, so it stays in the queue for operators.
One trigger per stage queue, made by one function: the host needs a distinct named function for
each trigger, and the worker reads the handler's annotations to bind the SDK message type.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from functions.invoke import report_dead_letter
from shared.queues import SERVICEBUS_CONNECTION, StageName

bp = func.Blueprint()
DEAD_LETTER_QUEUE = "{queue}/$deadletterqueue"  # Service Bus's path of a queue's dead-letter sub-queue


def _report_dead_letters_of(stage: StageName) -> None:
    async def handle(
        message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
    ) -> None:
        await report_dead_letter(stage, message, message_actions)

    # The host names a function after its handler: create_contact_dead_letters and so on.
    handle.__name__ = handle.__qualname__ = f"{stage.value.replace('-', '_')}_dead_letters"
    bp.service_bus_queue_trigger(
        arg_name="message",
        queue_name=DEAD_LETTER_QUEUE.format(queue=stage.value),
        connection=SERVICEBUS_CONNECTION,
        auto_complete_messages=False,
    )(handle)


for _stage in StageName:
    _report_dead_letters_of(_stage)

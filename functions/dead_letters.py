"""The dead-letter sub-queues: an outcome for what Service Bus dead-lettered by itself.

Thin by design: shared/dead_letters.py decides; a message the pipeline dead-lettered itself
(it already published the outcome) is only deferred, so it stays in the queue for operators.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from shared.bootstrap import dead_letter_reporter
from shared.contracts import StageName
from shared.settings import SERVICEBUS_CONNECTION

bp = func.Blueprint()
DEAD_LETTER_QUEUE = "{queue}/$deadletterqueue"  # Service Bus's path of a queue's dead-letter sub-queue


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=DEAD_LETTER_QUEUE.format(queue=StageName.CREATE_CONTACT.value),
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def create_contact_dead_letters(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    await (await dead_letter_reporter(StageName.CREATE_CONTACT)).run(message, message_actions)


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=DEAD_LETTER_QUEUE.format(queue=StageName.ADD_MEMBER.value),
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def add_member_dead_letters(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    await (await dead_letter_reporter(StageName.ADD_MEMBER)).run(message, message_actions)


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=DEAD_LETTER_QUEUE.format(queue=StageName.VERIFY_DELIVERY.value),
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def verify_delivery_dead_letters(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    await (await dead_letter_reporter(StageName.VERIFY_DELIVERY)).run(message, message_actions)

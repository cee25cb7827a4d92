"""Stage 1: make sure the external person exists as a mail contact or guest.

Thin by design: the runner decodes the message, calls the stage in
shared/stages/create_contact.py, and carries out its decision.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from functions.invoke import run_stage
from shared.queues import SERVICEBUS_CONNECTION, StageName

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=StageName.CREATE_CONTACT.value,
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def create_contact(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    await run_stage(StageName.CREATE_CONTACT, message, message_actions)

"""Stage 1: make sure the external person exists as a mail contact or guest.

Thin by design: the runner decodes the message, calls the stage in
shared/stages/create_contact.py, and carries out its decision.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from shared import stages
from shared.bootstrap import stage_runner
from shared.settings import SERVICEBUS_CONNECTION

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=stages.CREATE_CONTACT.name.value,
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def create_contact(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    runner = await stage_runner(stages.CREATE_CONTACT)
    await runner.run(message, message_actions)

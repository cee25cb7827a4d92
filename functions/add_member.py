"""Stage 2: make sure the recipient is a member of the group.

Thin by design: the runner decodes the message, calls the stage in
shared/stages/add_member.py, and carries out its decision.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from functions.invoke import run_stage
from shared.queues import SERVICEBUS_CONNECTION, StageName

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=StageName.ADD_MEMBER.value,
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def add_member(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    await run_stage(StageName.ADD_MEMBER, message, message_actions)

"""Stage 2: make sure the recipient is a member of the group.

Thin by design: the runner decodes the message, calls the stage in
shared/stages/add_member.py, and carries out its decision.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from shared import stages
from shared.bootstrap import stage_runner
from shared.settings import SERVICEBUS_CONNECTION

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=stages.ADD_MEMBER.name.value,
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def add_member(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    runner = await stage_runner(stages.ADD_MEMBER)
    await runner.run(message, message_actions)

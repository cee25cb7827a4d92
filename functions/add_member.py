"""Stage 2: make sure the recipient is a member of the group.

Thin by design: decode, call the stage in shared/stages/add_member.py, carry out its decision.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from shared import stages
from shared.bootstrap import stage_runner
from shared.contracts import StageName
from shared.settings import SERVICEBUS_CONNECTION

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
    runner = await stage_runner(StageName.ADD_MEMBER, stages.add_member)
    await runner.run(message, message_actions)

"""Stage 3: prove mail flows both ways, apply the 5.7.133 fix if allowed, publish the outcome.

Thin by design: the runner decodes the message, calls the stage in
shared/stages/verify_delivery.py, and carries out its decision.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from functions.invoke import run_stage
from shared.queues import SERVICEBUS_CONNECTION, StageName

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=StageName.VERIFY_DELIVERY.value,
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def verify_delivery(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    await run_stage(StageName.VERIFY_DELIVERY, message, message_actions)

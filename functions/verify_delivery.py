"""Stage 3: prove mail flows both ways, apply the 5.7.133 fix if allowed, publish the outcome.

Thin by design: the runner decodes the message, calls the stage in
shared/stages/verify_delivery.py, and carries out its decision.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from shared import stages
from shared.bootstrap import stage_runner
from shared.settings import SERVICEBUS_CONNECTION

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    queue_name=stages.VERIFY_DELIVERY.name.value,
    connection=SERVICEBUS_CONNECTION,
    auto_complete_messages=False,
)
async def verify_delivery(
    message: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    runner = await stage_runner(stages.VERIFY_DELIVERY)
    await runner.run(message, message_actions)

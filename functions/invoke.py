"""What every trigger calls: the app's services, imported on the first invocation.

Not when the host indexes the functions: indexing happens at every cold start and then loads only
azure-functions, the Service Bus extension and the queue names (shared/queues.py). The first message
loads the rest (pydantic contracts, the directory clients, azure-identity), which it needs anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared.queues import StageName

if TYPE_CHECKING:
    import azurefunctions.extensions.bindings.servicebus as servicebus


async def run_stage(
    name: StageName,
    message: servicebus.ServiceBusReceivedMessage,
    actions: servicebus.ServiceBusMessageActions,
    *,
    intake: str = "",
) -> None:
    from shared import bootstrap, stages  # deferred on purpose, see above

    runner = await bootstrap.stage_runner(stages.BY_NAME[name], queue=intake)
    await runner.run(message, actions)


async def sweep_dead_letters(queues: Mapping[str, StageName]) -> None:
    from shared import bootstrap  # deferred on purpose, see above

    await (await bootstrap.dead_letter_sweep(queues)).run()
    await bootstrap.catch_up_leases()  # and leases whose end's wake-up never acted


async def answer_self_check(
    message: servicebus.ServiceBusReceivedMessage, actions: servicebus.ServiceBusMessageActions
) -> None:
    from shared import bootstrap  # deferred on purpose, see above

    await (await bootstrap.self_check_responder()).run(message, actions)


async def watch_lease(
    message: servicebus.ServiceBusReceivedMessage, actions: servicebus.ServiceBusMessageActions
) -> None:
    from shared import bootstrap  # deferred on purpose, see above

    await (await bootstrap.lease_watch()).run(message, actions)


async def start_drift_sweep() -> None:
    from shared import bootstrap  # deferred on purpose, see above

    sweeper = await bootstrap.drift_sweeper()
    if sweeper is not None:
        await sweeper.start()


async def watch_drift(
    message: servicebus.ServiceBusReceivedMessage, actions: servicebus.ServiceBusMessageActions
) -> None:
    from shared import bootstrap  # deferred on purpose, see above

    await (await bootstrap.drift_watch()).run(message, actions)

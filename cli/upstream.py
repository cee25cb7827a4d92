"""What an upstream system does: put requests on `create-contact`, read outcome events back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from shared.contracts import OnboardingRequest, OutcomeEvent, StageName


async def submit(
    client: ServiceBusClient, requests: Iterable[OnboardingRequest], *, reply_to: str | None = None
) -> list[str]:
    """Send each request with MessageId = its request id (so a resend is a duplicate); return the ids."""
    messages: list[ServiceBusMessage] = []
    ids: list[str] = []
    for request in requests:
        request_id = request.request_id or f"req-{time.time_ns()}-{len(ids)}"
        ids.append(request_id)
        messages.append(
            ServiceBusMessage(
                request.model_dump_json(exclude_none=True).encode(),
                message_id=request_id,
                content_type="application/json",
                reply_to=reply_to,
            )
        )
    async with client.get_queue_sender(StageName.CREATE_CONTACT.value) as sender:
        await sender.send_messages(messages)
    return ids


async def collect_outcomes(
    client: ServiceBusClient, queue: str, request_ids: Iterable[str], *, within_seconds: float
) -> dict[str, OutcomeEvent]:
    """Outcomes for the given requests, completing each; stops when all arrived or time is up."""
    wanted = set(request_ids)
    outcomes: dict[str, OutcomeEvent] = {}
    deadline = asyncio.get_running_loop().time() + within_seconds
    async with client.get_queue_receiver(queue) as receiver:
        while wanted - outcomes.keys():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            for message in await receiver.receive_messages(max_message_count=20, max_wait_time=min(remaining, 2)):
                outcome = OutcomeEvent.model_validate_json(b"".join(message.body))
                if outcome.request_id in wanted:
                    outcomes[outcome.request_id] = outcome
                await receiver.complete_message(message)
    return outcomes

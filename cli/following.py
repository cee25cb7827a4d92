"""Send requests to `create-contact` and follow them to their outcome events: the one sequence that
`onboard submit`, `onboard bulk` and `onboard demo` share.

Following only peeks at the outcome queue, so every outcome stays there for whatever consumes it.
Where the queue stood just before the send is noted first (cli.upstream.mark_outcomes), so an
earlier run's outcome of the same request id is never taken for this send's.

A wait that ends early (Service Bus goes away, Ctrl-C) ends after the send: the requests go on in the
pipeline without the command, which then says so and how to follow them (`stopped_waiting`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from azure.core.exceptions import AzureError
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import ServiceBusError

from cli.upstream import Followed, mark_outcomes, submit, wait_for_outcomes
from shared.contracts import OnboardingRequest

Advance = Callable[[int], None]


@contextmanager
def _unshown(_total: int) -> Iterator[Advance]:
    yield lambda _count: None


def _say_nothing(_request_ids: list[str]) -> None:
    return None


@dataclass(frozen=True)
class Narration:
    """What a command shows on the way: progress while sending and while following (each a context
    around the step, given the count to expect and yielding what to call as they go), and what it says
    once the requests are sent (given their ids), before following them."""

    sending: Callable[[int], AbstractContextManager[Advance]] = _unshown
    sent: Callable[[list[str]], None] = _say_nothing
    following: Callable[[int], AbstractContextManager[Advance]] = _unshown
    again: str | None = None  # how to wait for many requests once more, said when a wait ends early


class StoppedWaiting(Exception):
    """Every request was sent, then the wait for their outcomes failed (Service Bus went away)."""

    def __init__(self, request_ids: list[str], error: AzureError, again: str | None) -> None:
        lost = (
            "Service Bus went away"
            if isinstance(error, ServiceBusError)
            else f"signing in failed ({type(error).__name__})"
        )
        super().__init__(f"Stopped waiting: {lost}")
        self.request_ids = request_ids
        self.again = again


def stopped_waiting(request_ids: Sequence[str], why: str, *, again: str | None = None) -> str:
    """What a waiting command says when its wait ends early: the requests were sent and go on in the
    pipeline, and how to follow them (`again`: how to wait once more, for many requests)."""
    if len(request_ids) == 1:
        return (
            f"{why}. Request {request_ids[0]} was sent and goes on in the pipeline: "
            f"`onboard status {request_ids[0]}` shows where it stands."
        )
    said = (
        f"{why}. All {len(request_ids)} requests were sent and go on in the pipeline: "
        "`onboard status --watch` shows where they stand, `onboard status REQUEST_ID` one of them"
    )
    return f"{said}; {again}." if again else f"{said}."


@dataclass(frozen=True)
class Sent:
    request_ids: list[str]  # in the order sent; a request without an id was given one
    followed: Followed | None  # None when not followed


async def send_and_follow(
    client: ServiceBusClient,
    requests: Sequence[OnboardingRequest],
    *,
    reply_to: str | None,
    outcome_queue: str,
    follow_seconds: float | None,
    narration: Narration = Narration(),  # frozen, so one shared default is safe
) -> Sent:
    """Send the requests, then, unless `follow_seconds` is None, wait that long at most for their outcomes
    on `outcome_queue` (the reply-to queue, else the app's outcome queue)."""
    known = {request.request_id: request.source_system for request in requests if request.request_id}
    # Before sending: what is on the outcome queue already is an earlier run's (none for a new id).
    mark = await mark_outcomes(client, outcome_queue, known) if follow_seconds is not None else None
    with narration.sending(len(requests)) as advance:
        request_ids = await submit(client, requests, reply_to=reply_to, sent=advance)
    narration.sent(request_ids)
    if mark is None or follow_seconds is None:
        return Sent(request_ids, None)
    with narration.following(len(request_ids)) as arrived:
        try:
            followed = await wait_for_outcomes(
                client,
                outcome_queue,
                dict(zip(request_ids, (request.source_system for request in requests), strict=True)),
                mark=mark,
                within_seconds=follow_seconds,
                on_outcome=lambda _outcome: arrived(1),
            )
        except AzureError as error:  # ServiceBusError included; the send is done, whatever comes now
            raise StoppedWaiting(request_ids, error, narration.again) from None
    return Sent(request_ids, followed)

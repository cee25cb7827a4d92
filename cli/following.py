"""Send requests to `create-contact` and follow them to their outcome events: the one sequence that
`onboard submit`, `onboard bulk` and `onboard demo` share.

Following only peeks at the outcome queue, so every outcome stays there for whatever consumes it.
Where the queue stood just before the send is noted first (cli.upstream.mark_outcomes), so an
earlier run's outcome of the same request id is never taken for this send's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from azure.servicebus.aio import ServiceBusClient

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
        followed = await wait_for_outcomes(
            client,
            outcome_queue,
            dict(zip(request_ids, (request.source_system for request in requests), strict=True)),
            mark=mark,
            within_seconds=follow_seconds,
            on_outcome=lambda _outcome: arrived(1),
        )
    return Sent(request_ids, followed)

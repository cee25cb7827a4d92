"""What a stage tells its function to do: exactly one decision per delivery.

The function carries it out in a fixed order (send or schedule first, settle second), so a crash
between the two leaves a duplicate, never a loss; every stage is idempotent, so duplicates are
harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.contracts import DeadLetterReason, OutcomeEvent, StageMessage, StageName


@dataclass(frozen=True)
class Delivery:
    """What the function decoded from the Service Bus envelope, independent of any SDK."""

    message_id: str
    request_id: str  # carried on our own messages; the MessageId for an upstream request
    correlation_id: str
    reply_to: str | None
    attempt: int  # 1 for the first try of this stage, +1 per scheduled retry
    first_attempt_at: datetime  # when this stage first saw the request: bounds total retry age
    phase: str = ""  # a stage run again on purpose (a welcome-mail re-check) has its own MessageIds
    replay: int = 0  # an operator's replay of a dead letter (onboard dlq replay): its own MessageIds and outcome
    throttles: int = 0  # retries the tenant's throttling forced: they do not use up attempts
    warnings: tuple[str, ...] = ()  # what intake noticed about the envelope (an unusable ReplyTo); reaches the outcome


@dataclass(frozen=True)
class PassOn:
    """Send `message` to `next_stage`, at once or after `delay` (a scheduled re-check of the same stage)."""

    next_stage: StageName
    message: StageMessage
    delay: timedelta | None = None


@dataclass(frozen=True)
class RetryLater:
    delay: timedelta
    cause: str
    throttled: bool = False  # the tenant said "not now": try again without using up an attempt


@dataclass(frozen=True)
class DeadLetter:
    reason: DeadLetterReason
    description: str
    outcome: OutcomeEvent


@dataclass(frozen=True)
class Finish:
    outcome: OutcomeEvent


Decision = PassOn | RetryLater | DeadLetter | Finish

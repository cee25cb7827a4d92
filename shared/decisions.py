"""What a stage tells its function to do: exactly one decision per delivery.

The function carries it out in a fixed order (send or schedule first, settle second), so a crash
between the two leaves a duplicate, never a loss; every stage is idempotent, so duplicates are
harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.contracts import DeadLetterReason, OutcomeEvent, OutcomeStatus, StageMessage, StageName


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


@dataclass(frozen=True)
class Ended:
    """Nothing done: the journal shows this message's run of the request ended already (shared/runner.py)."""

    stage: StageName
    status: OutcomeStatus
    at: datetime

"""Outcome building: the one event each request ends with, and the two decisions that publish it."""

from __future__ import annotations

from shared.contracts import DeadLetterReason, OutcomeEvent, OutcomeStatus
from shared.decisions import DeadLetter, Finish
from shared.progress import Progress, Turn

# A request that did its work: what keeps a lease or a roster entry (not Planned, not Failed).
DONE = frozenset({OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS})


def with_warning(outcome: OutcomeEvent, warning: str) -> OutcomeEvent:
    """The same outcome with one more warning: Succeeded becomes SucceededWithWarnings, others stay."""
    status = OutcomeStatus.SUCCEEDED_WITH_WARNINGS if outcome.status is OutcomeStatus.SUCCEEDED else outcome.status
    return outcome.model_copy(update={"warnings": (*outcome.warnings, warning), "status": status})


def outcome_event(
    turn: Turn, progress: Progress, status: OutcomeStatus, description: str, reason: DeadLetterReason | None = None
) -> OutcomeEvent:
    return OutcomeEvent(
        request_id=turn.delivery.request_id,
        source_system=progress.request.source_system if progress.request else None,
        action=progress.request.action if progress.request else None,
        status=status,
        reason=reason,
        description=description,
        stage=turn.stage,
        finished_at=turn.now,
        **progress.reported(OutcomeEvent.model_fields),  # group, recipient, changes, warnings, accepted_at
    )


def dead_letter(turn: Turn, progress: Progress, reason: DeadLetterReason, description: str) -> DeadLetter:
    """Stop here: the message goes to the dead-letter queue and the request fails with `reason`."""
    return DeadLetter(reason, description, outcome_event(turn, progress, OutcomeStatus.FAILED, description, reason))


def finish(turn: Turn, progress: Progress, description: str) -> Finish:
    """The request is done: Succeeded, or SucceededWithWarnings when anything was noted on the way."""
    status = OutcomeStatus.SUCCEEDED_WITH_WARNINGS if progress.warnings else OutcomeStatus.SUCCEEDED
    return Finish(outcome_event(turn, progress, status, description))


def planned(turn: Turn, progress: Progress, description: str) -> Finish:
    """A dry run is done: `progress.changes` hold what a real run would change, and nothing was."""
    return Finish(outcome_event(turn, progress, OutcomeStatus.PLANNED, description))

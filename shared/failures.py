"""Failure classification: which directory errors retry later and which end the request.

Stages call these by name; adapters have already mapped every HTTP answer onto one class of the
directory error hierarchy (shared/directory/errors.py), so the choice here is by class alone.
"""

from __future__ import annotations

from shared.contracts import DeadLetterReason
from shared.decisions import DeadLetter, Decision, RetryLater
from shared.directory.errors import (
    AddressHeldInternallyError,
    DirectoryError,
    GuestsNotAllowedError,
    InvitationRefusedError,
    NotFoundError,
    PermissionDeniedError,
    ThrottledError,
    TransientDirectoryError,
)
from shared.outcomes import dead_letter
from shared.progress import Progress, Turn
from shared.retry import RetryPolicy


def retry_or_give_up(
    turn: Turn,
    progress: Progress,
    retry: RetryPolicy,
    cause: str,
    retry_after: float | None = None,
    *,
    throttled: bool = False,
) -> RetryLater | DeadLetter:
    """A scheduled retry, or RetriesExhausted once the attempts or the total age are used up.

    Throttling uses no attempt (the tenant is busy, nothing failed): it waits what the tenant asks
    and is bounded by the age limit and `max_throttles` instead.
    """
    delivery = turn.delivery
    if throttled:
        delay = retry.throttled_delay(
            throttles=delivery.throttles,
            first_attempt_at=delivery.first_attempt_at,
            now=turn.now,
            retry_after=retry_after,
        )
    else:
        delay = retry.next_delay(
            attempt=delivery.attempt, first_attempt_at=delivery.first_attempt_at, now=turn.now, retry_after=retry_after
        )
    if delay is None:
        tries = f"{delivery.attempt} attempts" + (
            f" and {delivery.throttles} throttled tries" if delivery.throttles else ""
        )
        return dead_letter(
            turn,
            progress,
            DeadLetterReason.RETRIES_EXHAUSTED,
            f"Gave up at stage {turn.stage} after {tries}: {cause}. Fix the cause, then replay it (onboard dlq replay).",
        )
    return RetryLater(delay, cause, throttled)


def decide_on_directory_error(
    turn: Turn, progress: Progress, retry: RetryPolicy, error: DirectoryError, *, not_found_is_lag: bool = False
) -> Decision:
    """Transient failures (and, right after our own writes, "not found") retry; the rest stop."""
    if isinstance(error, TransientDirectoryError):
        throttled = isinstance(error, ThrottledError)
        return retry_or_give_up(turn, progress, retry, str(error), error.retry_after, throttled=throttled)
    if isinstance(error, NotFoundError) and not_found_is_lag:
        return retry_or_give_up(turn, progress, retry, f"not visible yet (replication lag): {error}")
    if isinstance(error, PermissionDeniedError):
        return dead_letter(turn, progress, DeadLetterReason.PERMISSION_DENIED, permission_denied(error))
    if refusal := _policy_refusal(error):
        return dead_letter(turn, progress, *refusal)
    return dead_letter(
        turn,
        progress,
        DeadLetterReason.DIRECTORY_REJECTED,
        f"{error.face} refused the change: {error}. Fix it in the tenant and replay (onboard dlq replay), or send a corrected request.",
    )


def permission_denied(error: PermissionDeniedError) -> str:
    """What was refused, the right it needs, and the fix."""
    needs = f" It needs {error.needed}." if error.needed else ""
    return (
        f"The app's identity was refused by {error.face}: {error}.{needs} Grant the app's rights with "
        "onboard grant (docs/permissions.md lists each one and why), then replay it (onboard dlq replay)."
    )


def _policy_refusal(error: DirectoryError) -> tuple[DeadLetterReason, str] | None:
    """Refusals of the tenant's or the group's own settings (or of the address): more rights change nothing."""
    if isinstance(error, AddressHeldInternallyError):
        return DeadLetterReason.ADDRESS_IN_USE_INTERNALLY, (
            f"Graph will not invite the address: {error.message} That is a user of this tenant, not an external "
            "person; add that user to the group instead."
        )
    if isinstance(error, InvitationRefusedError):
        return DeadLetterReason.INVITATION_REFUSED, (
            f"Graph refused to invite the person as a guest: {error}. The tenant's external collaboration settings "
            "decide this (Entra admin center, External Identities): who may invite guests (an app invites only when "
            "invitations are open to members or everyone, authorizationPolicy allowInvitesFrom) and which domains "
            "may be invited (the B2B collaboration allow/deny list). If this person should be invited, change them "
            "and replay (onboard dlq replay); if the address itself is refused, send a corrected request."
        )
    if isinstance(error, GuestsNotAllowedError):
        return DeadLetterReason.GUESTS_NOT_ALLOWED, (
            f"The group does not accept guests: {error}. Its guest setting forbids adding them (the group's "
            "Group.Unified.Guest setting AllowToAddGuests=false, or the tenant-wide Group.Unified one); the app's "
            "rights are not the cause. If this person should join, allow guests for the group (Set-MgGroupSetting, "
            "or the Microsoft 365 admin center), then replay (onboard dlq replay)."
        )
    return None

"""What each dead-letter reason means, in one table: who sets it, whether it refuses the request for
what it asked, and the operator's fix (a replay once the cause is fixed, or a new request).

The runner reads it for how loud its log line is, the dead-letter sweep for which reasons the
pipeline set itself (and so already published an outcome), and `onboard dlq replay` for what it
sends again. docs/reasons.md's and docs/runbook.md's reason tables are prose for people; a test checks
that they list these reasons in this order with these fixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from shared.contracts import DeadLetterReason


class Fix(StrEnum):
    NEW_REQUEST = "new request"  # the request itself is what is wrong: upstream sends it corrected
    REPLAY = "replay"  # `onboard dlq replay`, once the cause is fixed: every stage is idempotent
    NEITHER = "neither"  # neither helps: the request cannot be onboarded as asked


@dataclass(frozen=True)
class ReasonFacts:
    fix: Fix
    after: str = ""  # what to do before the fix, as the runbook says it ("changing the policy")
    refuses_the_request: bool = False  # refused for what it asked (a warning), not a fault on our side (an error)
    replayable: bool = True  # `onboard dlq replay` sends it again; an invalid body stays invalid however often
    set_by_service_bus: bool = False  # Service Bus's own reason for what it dead-letters by itself

    @property
    def fix_text(self) -> str:
        """The runbook's Fix column: "replay, after changing the policy"."""
        return f"{self.fix}, after {self.after}" if self.after else str(self.fix)


REASONS: Mapping[DeadLetterReason, ReasonFacts] = MappingProxyType(
    {
        DeadLetterReason.INVALID_REQUEST: ReasonFacts(Fix.NEW_REQUEST, refuses_the_request=True, replayable=False),
        DeadLetterReason.GROUP_NOT_FOUND: ReasonFacts(Fix.NEW_REQUEST, refuses_the_request=True),
        DeadLetterReason.UNSUPPORTED_GROUP_KIND: ReasonFacts(Fix.NEW_REQUEST, refuses_the_request=True),
        DeadLetterReason.POLICY_DENIED: ReasonFacts(Fix.REPLAY, "changing the policy", refuses_the_request=True),
        DeadLetterReason.ADDRESS_IN_USE_INTERNALLY: ReasonFacts(Fix.NEITHER, refuses_the_request=True),
        DeadLetterReason.INVITATION_REFUSED: ReasonFacts(
            Fix.REPLAY, "changing the tenant's external collaboration settings", refuses_the_request=True
        ),
        DeadLetterReason.GUESTS_NOT_ALLOWED: ReasonFacts(
            Fix.REPLAY, "allowing guests in the group", refuses_the_request=True
        ),
        DeadLetterReason.ADDRESS_HELD_BY_MAIL_CONTACT: ReasonFacts(
            Fix.REPLAY, "removing the mail contact", refuses_the_request=True
        ),
        DeadLetterReason.PERMISSION_DENIED: ReasonFacts(Fix.REPLAY, "granting the rights"),
        DeadLetterReason.DIRECTORY_REJECTED: ReasonFacts(Fix.REPLAY, "fixing the tenant"),
        DeadLetterReason.RETRIES_EXHAUSTED: ReasonFacts(Fix.REPLAY),
        DeadLetterReason.DELIVERY_FAILED: ReasonFacts(Fix.NEW_REQUEST, refuses_the_request=True),
        # An address is the person's identity (idempotency, provenance): a change is an offboard and an onboard.
        DeadLetterReason.ADDRESS_CHANGE_REFUSED: ReasonFacts(
            Fix.NEW_REQUEST, refuses_the_request=True, replayable=False
        ),
        DeadLetterReason.PROCESSING_FAILED: ReasonFacts(Fix.REPLAY, "fixing the cause"),
        DeadLetterReason.MAX_DELIVERY_COUNT_EXCEEDED: ReasonFacts(
            Fix.REPLAY, "fixing the cause", set_by_service_bus=True
        ),
        DeadLetterReason.TTL_EXPIRED: ReasonFacts(Fix.REPLAY, set_by_service_bus=True),
    }
)


def facts_of(reason: str) -> ReasonFacts | None:
    """The facts of a reason as a dead letter names it; None for one the app does not know."""
    try:
        return REASONS[DeadLetterReason(reason)]
    except ValueError:
        return None

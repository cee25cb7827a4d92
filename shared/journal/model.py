"""What the journal stores: one row per transition a stage's delivery went through.

A transition is written once per delivery a stage handled, so a redelivered message (after a
crash) appears twice, at two different times: that is the history an operator needs to see.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.contracts import GroupKind, OutcomeStatus, StageName
from shared.logs import mask_emails

# Wider than contracts.RequestId on purpose: an unreadable envelope is journalled under the raw
# MessageId Service Bus accepted (at most 128 characters, any of them). Each adapter stores any such
# id; Table Storage escapes the characters it refuses in a key (table_storage.partition_key).
JournalRequestId = Annotated[str, StringConstraints(min_length=1, max_length=256)]

CAUSE_MAX = 2000  # a cause is a reason plus a short description, not a body dump
ATTEMPT_MAX = 999_999  # the key pads attempts to six digits
_AS_STORED = "as_stored"


class TransitionKind(StrEnum):
    """What the runner did with one delivery (the decision, plus the crash that decided nothing)."""

    PASSED_ON = "passed-on"
    RETRY_SCHEDULED = "retry-scheduled"
    DEAD_LETTERED = "dead-lettered"
    FINISHED = "finished"
    CRASHED = "crashed"  # unexpected error: the message was abandoned for Service Bus to redeliver


# Only these end a request with an outcome event, so only they may carry its status.
_WITH_OUTCOME = frozenset({TransitionKind.DEAD_LETTERED, TransitionKind.FINISHED})


class Transition(BaseModel):
    """One delivery's transition. `cause` must not hold a person's address or a secret: the caller masks
    (addresses are masked here again, as a second line of defence, showing the group addresses of the
    request in hand; a transition read back with `as_stored` is not masked again, or the CLI, which has
    no request in hand, would mask those)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: JournalRequestId
    stage: StageName
    decision: TransitionKind
    attempt: int = Field(ge=1, le=ATTEMPT_MAX)
    cause: str | None = Field(
        default=None,
        max_length=CAUSE_MAX,
        description="Retry cause, dead-letter reason and description, outcome status, or the exception type.",
    )
    outcome_status: OutcomeStatus | None = None
    at: AwareDatetime

    @classmethod
    def as_stored(cls, **fields: Any) -> Transition:
        """A transition as a journal gives it back: its cause was masked when it was recorded."""
        return cls.model_validate(fields, context={_AS_STORED: True})

    @field_validator("cause")
    @classmethod
    def _mask(cls, cause: str | None, info: ValidationInfo) -> str | None:
        if cause is None or (info.context or {}).get(_AS_STORED):
            return cause
        return mask_emails(cause)

    @field_validator("at")
    @classmethod
    def _utc(cls, at: datetime) -> datetime:
        return at.astimezone(UTC)

    @model_validator(mode="after")
    def _outcome_only_when_ending(self) -> Transition:
        if self.outcome_status is not None and self.decision not in _WITH_OUTCOME:
            raise ValueError(f"outcome_status is only recorded with {sorted(_WITH_OUTCOME)}, not {self.decision}")
        return self

    @property
    def key(self) -> str:
        """Sortable identity within a request: time, then stage, attempt and kind.

        Recording a transition with the same request id and key again replaces the row (last write
        wins), so a retried journal write never duplicates a transition. Both adapters use it.
        """
        return f"{self.at:%Y%m%dT%H%M%S%fZ}_{self.stage}_{self.attempt:06d}_{self.decision}"


class RequestState(BaseModel):
    """Where one request stands: its latest transition and how many transitions it has had."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    last_stage: StageName
    last_decision: TransitionKind
    last_at: AwareDatetime
    last_outcome_status: OutcomeStatus | None = None
    last_cause: str | None = Field(default=None, max_length=CAUSE_MAX, description="The latest transition's cause.")
    attempts: int = Field(ge=1, description="Transitions recorded: deliveries handled across all stages.")

    @classmethod
    def of(cls, latest: Transition, attempts: int) -> RequestState:
        return cls(
            request_id=latest.request_id,
            last_stage=latest.stage,
            last_decision=latest.decision,
            last_at=latest.at,
            last_outcome_status=latest.outcome_status,
            last_cause=latest.cause,
            attempts=attempts,
        )


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"summary limit must be at least 1, not {limit}")


class LeaseState(StrEnum):
    """Where a lease stands. Only an active lease's wake-up acts; the others are history."""

    ACTIVE = "active"
    EXPIRED = "expired"  # its end came: the app sent the offboard request that removes the membership
    ENDED = "ended"  # the person was offboarded before the end (an offboard request, or an onboarding without one)


class Lease(BaseModel):
    """A membership that ends: one per person and group (`key`), the latest onboarding's end.

    The lease journal is the truth; a scheduled wake-up message only says "look now" (docs/leases.md).
    It holds the person's address, since the app must name the person in the offboard request it sends
    at the end: shown masked by `onboard leases`, like the rest of the journal.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: Annotated[str, StringConstraints(pattern=r"^lease-[0-9a-f]{32}$")]
    external_email: str = Field(min_length=3, max_length=320)
    display_name: str = Field(min_length=1, max_length=256)
    group_id: str = Field(min_length=1, max_length=256)
    group_mail: str = Field(min_length=3, max_length=320)
    group_display_name: str = Field(max_length=256)
    group_kind: GroupKind
    source_system: str = Field(min_length=1, max_length=64)
    ends_at: AwareDatetime
    notice_at: AwareDatetime
    request_id: JournalRequestId  # the onboarding that set this end
    correlation_id: str = Field(min_length=1, max_length=256)
    reply_to: str | None = Field(default=None, max_length=260)  # where the notice and the expiry's outcome go
    state: LeaseState = LeaseState.ACTIVE
    updated_at: AwareDatetime

    @field_validator("ends_at", "notice_at", "updated_at")
    @classmethod
    def _in_utc(cls, at: datetime) -> datetime:
        return at.astimezone(UTC)

    def settled_as(self, kept: Lease | None) -> bool:
        """The book holds this very lease (the same onboarding, the same end) settled already: kept again, by
        a redelivered onboarding, it must stay settled, since its end's wake-up has acted and none would again."""
        return (
            kept is not None
            and kept.state is not LeaseState.ACTIVE
            and kept.request_id == self.request_id
            and kept.ends_at == self.ends_at
        )

"""What every stage shares: its dependencies, how it builds outcomes, how it classifies failures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from shared.contracts import (
    OnboardingRequest,
    OutcomeEvent,
    OutcomeStatus,
    Recipient,
    ResolvedGroup,
    StageMessage,
    StageName,
    WelcomeCheck,
)
from shared.decisions import DeadLetter, DeadLetterReason, Decision, Delivery, Finish, RetryLater
from shared.directory.errors import (
    DirectoryError,
    NotFoundError,
    PermissionDeniedError,
    TransientDirectoryError,
)
from shared.directory.ports import ExchangeDirectory, GraphDirectory
from shared.policy import OnboardingPolicy
from shared.retry import RetryPolicy


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WelcomeMail:
    """The optional welcome message and how long verify-delivery waits for its message trace."""

    sender: str
    subject: str  # "{group}" is replaced with the group's display name
    check_interval: timedelta
    deadline: timedelta


@dataclass(frozen=True)
class StageDependencies:
    graph: GraphDirectory
    exchange: ExchangeDirectory
    policy: OnboardingPolicy
    retry: RetryPolicy
    guest_redirect_url: str
    welcome: WelcomeMail | None = None
    clock: Callable[[], datetime] = utc_now


@dataclass
class Progress:
    """What one delivery has learnt so far, so that any decision can report it."""

    stage: StageName
    delivery: Delivery
    deps: StageDependencies
    request: OnboardingRequest | None = None
    group: ResolvedGroup | None = None
    recipient: Recipient | None = None
    accepted_at: datetime | None = None
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    welcome: WelcomeCheck | None = None

    @classmethod
    def resume(cls, stage: StageName, delivery: Delivery, deps: StageDependencies, message: StageMessage) -> Progress:
        return cls(
            stage=stage,
            delivery=delivery,
            deps=deps,
            request=message.request,
            group=message.group,
            recipient=message.recipient,
            accepted_at=message.accepted_at,
            changes=list(message.changes),
            warnings=list(message.warnings),
            welcome=message.welcome,
        )

    def _outcome(self, status: OutcomeStatus, description: str, reason: str | None = None) -> OutcomeEvent:
        return OutcomeEvent(
            request_id=self.delivery.request_id,
            source_system=self.request.source_system if self.request else None,
            status=status,
            reason=reason,
            description=description,
            stage=self.stage,
            group=self.group,
            recipient=self.recipient,
            changes=tuple(self.changes),
            warnings=tuple(self.warnings),
            accepted_at=self.accepted_at,
            finished_at=self.deps.clock(),
        )

    def dead_letter(self, reason: DeadLetterReason, description: str) -> DeadLetter:
        return DeadLetter(reason, description, self._outcome(OutcomeStatus.FAILED, description, reason))

    def finish(self, description: str) -> Finish:
        status = OutcomeStatus.SUCCEEDED_WITH_WARNINGS if self.warnings else OutcomeStatus.SUCCEEDED
        return Finish(self._outcome(status, description))

    def retry_or_give_up(self, cause: str, retry_after: float | None = None) -> RetryLater | DeadLetter:
        delay = self.deps.retry.next_delay(
            attempt=self.delivery.attempt,
            first_attempt_at=self.delivery.first_attempt_at,
            now=self.deps.clock(),
            retry_after=retry_after,
        )
        if delay is None:
            return self.dead_letter(
                DeadLetterReason.RETRIES_EXHAUSTED,
                f"Gave up at stage {self.stage} after {self.delivery.attempt} attempts: {cause}. "
                "Fix the cause, then resubmit the request.",
            )
        return RetryLater(delay, cause)

    def stage_message(self) -> StageMessage:
        assert self.request is not None, "set before any pass-on"
        assert self.group is not None
        assert self.recipient is not None
        assert self.accepted_at is not None
        return StageMessage(
            request=self.request,
            request_id=self.delivery.request_id,
            group=self.group,
            recipient=self.recipient,
            reply_to=self.delivery.reply_to,
            accepted_at=self.accepted_at,
            changes=tuple(self.changes),
            warnings=tuple(self.warnings),
            welcome=self.welcome,
        )

    def on_directory_error(self, error: DirectoryError, *, not_found_is_lag: bool = False) -> Decision:
        """Transient failures (and, right after our own writes, "not found") retry; the rest stop."""
        if isinstance(error, TransientDirectoryError):
            return self.retry_or_give_up(str(error), error.retry_after)
        if isinstance(error, NotFoundError) and not_found_is_lag:
            return self.retry_or_give_up(f"not visible yet (replication lag): {error}")
        if isinstance(error, PermissionDeniedError):
            return self.dead_letter(
                DeadLetterReason.PERMISSION_DENIED,
                f"The app's identity was refused by {error.face}: {error}. Grant the rights listed in "
                "infra/README.md (Graph application permissions, Exchange.ManageAsApp and the "
                "Exchange Recipient Administrator role), then resubmit.",
            )
        return self.dead_letter(
            DeadLetterReason.DIRECTORY_REJECTED,
            f"{error.face} refused the change: {error}. Check the group and the request, then resubmit.",
        )


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, naming the field; input values are left out (they may hold addresses)."""
    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()]
    return "; ".join(problems)


def resume_from(
    stage: StageName, body: bytes, delivery: Delivery, deps: StageDependencies
) -> tuple[Progress, StageMessage] | DeadLetter:
    """Parse the previous stage's message and pick up its progress; a malformed one dead-letters."""
    try:
        message = StageMessage.model_validate_json(body)
    except ValidationError as error:
        return Progress(stage, delivery, deps).dead_letter(
            DeadLetterReason.INVALID_REQUEST,
            f"The stage message is not a valid contract v1 StageMessage: {describe_validation_error(error)}",
        )
    return Progress.resume(stage, delivery, deps, message), message

"""What a request has gathered on its way through the stages, and who is reporting on it now."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shared.contracts import OnboardingRequest, Recipient, ResolvedGroup, StageMessage, StageName, WelcomeCheck
from shared.decisions import Delivery


@dataclass(frozen=True)
class Turn:
    """One stage handling one delivery: which stage reports, about which request, and when."""

    stage: StageName
    delivery: Delivery
    now: datetime


@dataclass
class Progress:
    """What the request has gathered so far; every decision reports it, and a pass-on carries it."""

    request: OnboardingRequest | None = None
    group: ResolvedGroup | None = None
    recipient: Recipient | None = None
    accepted_at: datetime | None = None
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    welcome: WelcomeCheck | None = None
    newly_added: bool = True  # add-member found the recipient already in the group: False

    @classmethod
    def of(cls, message: StageMessage) -> Progress:
        """Pick up where the previous stage left off."""
        return cls(
            request=message.request,
            group=message.group,
            recipient=message.recipient,
            accepted_at=message.accepted_at,
            changes=list(message.changes),
            warnings=list(message.warnings),
            welcome=message.welcome,
            newly_added=message.newly_added,
        )

    def stage_message(self, delivery: Delivery) -> StageMessage:
        """The body of the next stage's message; only valid once group and recipient are known."""
        assert self.request is not None, "set before any pass-on"
        assert self.group is not None
        assert self.recipient is not None
        assert self.accepted_at is not None
        return StageMessage(
            request=self.request,
            request_id=delivery.request_id,
            group=self.group,
            recipient=self.recipient,
            reply_to=delivery.reply_to,
            accepted_at=self.accepted_at,
            changes=tuple(self.changes),
            warnings=tuple(self.warnings),
            welcome=self.welcome,
            newly_added=self.newly_added,
        )

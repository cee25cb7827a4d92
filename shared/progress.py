"""What a request has gathered on its way through the stages, and who is reporting on it now."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import Field, dataclass, field, fields
from datetime import datetime
from typing import Any

from shared.addresses import same_address
from shared.contracts import OnboardingRequest, Recipient, ResolvedGroup, StageMessage, StageName, WelcomeCheck
from shared.envelope import Delivery


@dataclass(frozen=True)
class Turn:
    """One stage handling one delivery: which stage reports, about which request, and when."""

    stage: StageName
    delivery: Delivery
    now: datetime


@dataclass
class Progress:
    """What the request has gathered so far; every decision reports it, and a pass-on carries it.

    Its fields are the stage message's (contracts.StageMessage), name for name, so one conversion
    each way copies them all; the outcome reports those it also has.
    """

    request: OnboardingRequest | None = None
    group: ResolvedGroup | None = None
    recipient: Recipient | None = None
    accepted_at: datetime | None = None
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    welcome: WelcomeCheck | None = None
    newly_added: bool = True  # add-member found the recipient already in the group: False

    def __post_init__(self) -> None:
        self.changes, self.warnings = list(self.changes), list(self.warnings)  # a message carries tuples

    @classmethod
    def of(cls, message: StageMessage) -> Progress:
        """Pick up where the previous stage left off."""
        return cls(**_fields_of(message, fields(cls)))

    def stage_message(self) -> StageMessage:
        """The body of the next stage's message; only valid once group and recipient are known."""
        return StageMessage(**_fields_of(self, fields(self)))

    def reported(self, names: Iterable[str]) -> dict[str, Any]:
        """What the request has gathered, as far as an event with fields `names` reports it."""
        return _fields_of(self, [known for known in fields(self) if known.name in names])


def _fields_of(source: object, wanted: Iterable[Field[Any]]) -> dict[str, Any]:
    return {wanted_field.name: getattr(source, wanted_field.name) for wanted_field in wanted}


def group_addresses(message: OnboardingRequest | StageMessage | Progress) -> frozenset[str]:
    """The addresses a message names as the tenant's group, which logs, the journal and `onboard dlq`
    show (docs/logging.md): the group the request asks for and the group the directory resolved. The
    person's own address is never among them, even when a request gives it as the group too."""
    request, resolved = (message, None) if isinstance(message, OnboardingRequest) else (message.request, message.group)
    if request is None:
        return frozenset()
    named = {str(request.group.smtp_address)} if request.group.smtp_address else set()
    if resolved is not None:
        named.add(resolved.mail)
    person = str(request.external_email)
    return frozenset(address for address in named if not same_address(address, person))

"""The three stages: typed input in, one decision out; no Service Bus or Functions types.

Each `Stage` names the contract its queue carries, so the runner decodes a message once, before
the stage sees it, and an unreadable one is refused in one place (shared/runner.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.contracts import OnboardingRequest, StageMessage, StageName
from shared.decisions import Decision, Delivery
from shared.stages.add_member import add_member
from shared.stages.create_contact import create_contact
from shared.stages.dependencies import StageDependencies, WelcomeMail
from shared.stages.verify_delivery import verify_delivery

Input = TypeVar("Input", OnboardingRequest, StageMessage)


@dataclass(frozen=True)
class Stage(Generic[Input]):
    name: StageName
    reads: type[Input]  # the contract of the stage's queue
    handle: Callable[[Input, Delivery, StageDependencies], Awaitable[Decision]]


CREATE_CONTACT = Stage(StageName.CREATE_CONTACT, OnboardingRequest, create_contact)
ADD_MEMBER = Stage(StageName.ADD_MEMBER, StageMessage, add_member)
VERIFY_DELIVERY = Stage(StageName.VERIFY_DELIVERY, StageMessage, verify_delivery)
BY_NAME: dict[StageName, Stage[OnboardingRequest] | Stage[StageMessage]] = {
    stage.name: stage for stage in (CREATE_CONTACT, ADD_MEMBER, VERIFY_DELIVERY)
}

__all__ = [
    "ADD_MEMBER",
    "BY_NAME",
    "CREATE_CONTACT",
    "VERIFY_DELIVERY",
    "Stage",
    "StageDependencies",
    "WelcomeMail",
    "add_member",
    "create_contact",
    "verify_delivery",
]

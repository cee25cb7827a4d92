"""The three stages: typed input in, one decision out; no Service Bus or Functions types.

The registry (BY_NAME) follows the pipeline's order (shared/queues.py, PIPELINE). Which contract a
stage's queue carries is envelope.contract_of's to say, so the runner decodes a message once,
before the stage sees it, and an unreadable one is refused in one place (shared/runner.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.contracts import OnboardingRequest, StageMessage, StageName
from shared.decisions import Decision
from shared.envelope import Delivery
from shared.queues import PIPELINE
from shared.stages.add_member import add_member
from shared.stages.create_contact import create_contact
from shared.stages.dependencies import StageDependencies, WelcomeMail
from shared.stages.verify_delivery import verify_delivery

Input = TypeVar("Input", OnboardingRequest, StageMessage)


@dataclass(frozen=True)
class Stage(Generic[Input]):
    name: StageName
    handle: Callable[[Input, Delivery, StageDependencies], Awaitable[Decision]]  # Input: envelope.contract_of(name)


CREATE_CONTACT = Stage(StageName.CREATE_CONTACT, create_contact)
ADD_MEMBER = Stage(StageName.ADD_MEMBER, add_member)
VERIFY_DELIVERY = Stage(StageName.VERIFY_DELIVERY, verify_delivery)
_STAGES = {stage.name: stage for stage in (CREATE_CONTACT, ADD_MEMBER, VERIFY_DELIVERY)}
BY_NAME: dict[StageName, Stage[OnboardingRequest] | Stage[StageMessage]] = {name: _STAGES[name] for name in PIPELINE}

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

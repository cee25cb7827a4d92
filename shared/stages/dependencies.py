"""What every stage is given: the directory ports, the policy, the retry policy, a clock and a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from shared.directory.ports import ExchangeDirectory, GraphDirectory
from shared.policy import OnboardingPolicy
from shared.retry import RetryPolicy

if TYPE_CHECKING:
    from shared.contracts import OnboardingRequest, StageMessage
    from shared.decisions import Finish
    from shared.envelope import Delivery


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WelcomeMail:
    """The optional welcome message and how long verify-delivery waits for its message trace."""

    sender: str
    subject: str  # "{group}" is replaced with the group's display name
    check_interval: timedelta
    deadline: timedelta


class LeaseKeeping(Protocol):
    """Keeps a finished onboarding's lease (shared/leases.py, LeaseKeeper)."""

    async def finished(
        self, decision: Finish, message: StageMessage, delivery: Delivery, policy: OnboardingPolicy
    ) -> Finish: ...

    async def offboarded(self, decision: Finish, request: OnboardingRequest) -> Finish: ...


class RosterKeeping(Protocol):
    """Keeps the drift watch's roster (shared/drift/roster.py, RosterKeeper)."""

    async def finished(self, decision: Finish, message: StageMessage, delivery: Delivery) -> Finish: ...

    async def offboarded(self, decision: Finish, request: OnboardingRequest) -> Finish: ...

    async def updated(self, decision: Finish, request: OnboardingRequest) -> Finish: ...


@dataclass(frozen=True)
class StageDependencies:
    graph: GraphDirectory
    exchange: ExchangeDirectory
    policy: OnboardingPolicy
    retry: RetryPolicy
    guest_redirect_url: str
    welcome: WelcomeMail | None = None
    clock: Callable[[], datetime] = utc_now
    leases: LeaseKeeping | None = None  # None: no lease book (no journal), so a lease is refused at intake
    roster: RosterKeeping | None = None  # None: no journal, so nothing is watched for drift (docs/drift.md)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # a short wait within an invocation

"""What every stage is given: the directory ports, the policy, the retry policy, a clock and a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # a short wait within an invocation

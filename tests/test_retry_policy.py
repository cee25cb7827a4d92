"""Backoff with full jitter, Retry-After as a floor, attempts and age as limits; throttling apart."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from shared import envelope
from shared.contracts import StageName
from shared.decisions import DeadLetter, RetryLater
from shared.directory.errors import ThrottledError, TransientDirectoryError
from shared.directory.throttle import ThrottleGate
from shared.envelope import Delivery
from shared.failures import decide_on_directory_error
from shared.progress import Progress, Turn
from shared.retry import RetryPolicy

START = datetime(2026, 11, 23, tzinfo=UTC)


def policy(**kwargs: object) -> RetryPolicy:
    return RetryPolicy(random=random.Random(1), **kwargs)  # type: ignore[arg-type]


def test_delays_stay_within_the_exponential_ceiling() -> None:
    retry = policy(base_delay=timedelta(seconds=5), max_delay=timedelta(seconds=60), max_attempts=50)
    for attempt in range(1, 12):
        ceiling = min(60.0, 5.0 * 2 ** max(0, attempt - 1))
        delays = [retry.delay_before(attempt + 1, None).total_seconds() for _ in range(200)]
        assert min(delays) >= 0
        assert max(delays) <= ceiling
        assert max(delays) > ceiling / 2  # jitter spreads over the whole range


def test_retry_after_is_a_floor() -> None:
    retry = policy(base_delay=timedelta(seconds=1))
    assert all(retry.delay_before(2, 45).total_seconds() >= 45 for _ in range(50))


def test_attempts_and_age_are_bounded() -> None:
    retry = policy(max_attempts=3, max_age=timedelta(minutes=10))
    assert retry.next_delay(attempt=2, first_attempt_at=START, now=START, retry_after=None) is not None
    assert retry.next_delay(attempt=3, first_attempt_at=START, now=START, retry_after=None) is None
    late = START + timedelta(minutes=9, seconds=50)
    assert retry.next_delay(attempt=1, first_attempt_at=START, now=late, retry_after=60) is None


def test_throttling_waits_what_the_tenant_asks_spread_and_bounded() -> None:
    retry = policy(max_attempts=3, max_throttles=5, max_age=timedelta(minutes=10))
    delays = [retry.throttled_delay(throttles=0, first_attempt_at=START, now=START, retry_after=20) for _ in range(100)]
    seconds = [d.total_seconds() for d in delays if d is not None]
    assert len(seconds) == 100 and min(seconds) >= 20 and max(seconds) <= 30 and max(seconds) - min(seconds) > 5
    assert retry.throttled_delay(throttles=5, first_attempt_at=START, now=START, retry_after=1) is None
    late = START + timedelta(minutes=9, seconds=50)
    assert retry.throttled_delay(throttles=0, first_attempt_at=START, now=late, retry_after=20) is None


def test_a_throttled_retry_uses_no_attempt_and_has_its_own_message_id() -> None:
    """Eight 429s in a row must not dead-letter a request whose attempts are meant for real failures."""
    delivery = Delivery("m", "req-1", "req-1", None, attempt=2, first_attempt_at=START)
    turn = Turn(StageName.ADD_MEMBER, delivery, START)
    decision = decide_on_directory_error(
        turn, Progress(), policy(max_attempts=2), ThrottledError("429", face="exchange", retry_after=3)
    )
    assert isinstance(decision, RetryLater) and decision.throttled and decision.delay >= timedelta(seconds=3)
    again = envelope.retry_message(StageName.ADD_MEMBER, b"{}", delivery, throttled=True)
    assert again.message_id == "req-1/add-member/2/t1"
    assert again.application_properties is not None
    assert (
        again.application_properties["onboarding-attempt"],
        again.application_properties["onboarding-throttles"],
    ) == (
        "2",
        "1",
    )
    spent = decide_on_directory_error(
        turn, Progress(), policy(max_attempts=2), TransientDirectoryError("503", face="exchange")
    )
    assert isinstance(spent, DeadLetter)  # an outage does use attempts: the second was the last


async def test_the_gate_holds_every_caller_until_the_tenant_allows() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    gate = ThrottleGate(clock=lambda: now[0], sleep=sleep)
    await gate.wait()
    assert slept == []
    await gate.hold(7)
    await gate.hold(2)  # a shorter hold never shortens the first
    await gate.wait()
    assert slept == [7] and gate.closed_for() == 0

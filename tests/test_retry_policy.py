"""Backoff with full jitter, Retry-After as a floor, attempts and age as limits."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

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

"""When to try a transient failure again: exponential backoff with full jitter, bounded.

Waits are never shorter than the service's Retry-After, and become scheduled Service Bus
messages (never a blocked worker). Attempts and total age are both capped so a request that
cannot succeed ends in a dead-letter with a reason instead of circling for ever.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(minutes=15)
    max_age: timedelta = timedelta(hours=24)
    max_throttles: int = 100  # a bound even a tenant that always answers 429 cannot stretch
    random: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_before(self, next_attempt: int, retry_after: float | None) -> timedelta:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^(n-2))]."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, next_attempt - 2))
        jittered = timedelta(seconds=self.random.uniform(0, ceiling.total_seconds()))
        floor = timedelta(seconds=retry_after or 0)
        return max(jittered, floor)

    def next_delay(
        self, *, attempt: int, first_attempt_at: datetime, now: datetime, retry_after: float | None
    ) -> timedelta | None:
        """The wait before attempt + 1, or None when attempts or age are used up."""
        if attempt >= self.max_attempts:
            return None
        delay = self.delay_before(attempt + 1, retry_after)
        if now + delay - first_attempt_at > self.max_age:
            return None
        return delay

    def throttled_delay(
        self, *, throttles: int, first_attempt_at: datetime, now: datetime, retry_after: float | None
    ) -> timedelta | None:
        """The wait after a 429: what the tenant asked (else the base delay) and up to half again, so
        the invocations throttled together do not return together. None past the age or throttle cap."""
        if throttles >= self.max_throttles:
            return None
        asked = retry_after if retry_after is not None else self.base_delay.total_seconds()
        delay = min(timedelta(seconds=asked * self.random.uniform(1.0, 1.5)), self.max_delay)
        if now + delay - first_attempt_at > self.max_age:
            return None
        return delay

"""One gate per process for Exchange Online: once it answers 429 with Retry-After, or says with
Rate-Limit-Remaining: 0 that nothing is left until Rate-Limit-Reset, no call from this process goes
to Exchange before then.

Exchange throttles per app and tenant (docs/microsoft-365-facts.md), so a 429 to one invocation is
the answer every concurrent invocation would get: without the gate, the other
`maxConcurrentCalls - 1` keep spending attempts (and the tenant's patience) on the same refusal.
Graph calls have no gate: msgraph-sdk's retry handler waits out a brief Retry-After per call, and a
longer one becomes a scheduled Service Bus retry (shared/directory/graph.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class ThrottleGate:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock, self._sleep = clock, sleep
        self._open_at = 0.0

    def hold(self, seconds: float) -> None:
        """Keep the gate shut for `seconds` from now (never shortens an earlier hold)."""
        self._open_at = max(self._open_at, self._clock() + max(seconds, 0.0))

    def closed_for(self) -> float:
        return max(self._open_at - self._clock(), 0.0)

    async def wait(self) -> None:
        """Return once the gate is open; a hold made while waiting is waited out too."""
        while (delay := self.closed_for()) > 0:
            await self._sleep(delay)

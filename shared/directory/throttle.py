"""One gate per face for the whole app: once the tenant answers 429 with Retry-After, or Exchange says
with Rate-Limit-Remaining: 0 that nothing is left until Rate-Limit-Reset, no call from any instance
goes to that face before then.

Graph and Exchange throttle per app and tenant (docs/microsoft-365-facts.md), so a 429 to one
invocation is the answer every concurrent invocation would get, on this instance and on every other:
without the gate, the other `maxConcurrentCalls - 1` invocations keep spending attempts (and the
tenant's patience) on the same refusal, and each further instance has to collect 429s of its own to
learn what one of them already knows. So a hold is written to a store every instance reads
(`SharedHolds`, the status journal's: docs/performance.md, "Many instances, one tenant"), read again
at most every `refresh_seconds` while calls are made; the later of the local and the shared hold wins.
Instances then stop together and start again together, as one instance would. Without a shared store
(no journal) the gate is the instance's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar, runtime_checkable

logger = logging.getLogger("onboarding.throttle")
T = TypeVar("T")

# How stale an instance's view of the other instances' holds may be. A hold is at least a second
# (Retry-After is whole seconds), so a quarter of one lets few calls through after another instance
# was told to wait; in Azure it is at most four point reads a second per busy instance.
REFRESH_SECONDS = 0.25
# A 429 without Retry-After (Graph always sends one; Exchange's REST endpoint documents none).
DEFAULT_HOLD_SECONDS = 2.0


@runtime_checkable
class SharedHolds(Protocol):
    """Holds every instance of the app sees (times are Unix seconds: instances share no monotonic clock)."""

    async def read_holds(self) -> Mapping[str, float]:
        """Each face's hold: no call before this time."""
        ...

    async def extend_hold(self, face: str, until: float) -> None:
        """Hold `face` until `until`, unless it is already held longer."""
        ...


class ThrottleGate:
    def __init__(
        self,
        face: str = "exchange",
        *,
        shared: SharedHolds | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.face = face
        self._shared, self._refresh = shared, refresh_seconds
        self._clock, self._sleep = clock, sleep
        self._open_at = 0.0
        self._read_at: float | None = None  # when the shared holds were last read
        self._reading = asyncio.Lock()  # one read at a time per instance, however many callers wait
        self._store_failing = False

    async def hold(self, seconds: float) -> None:
        """Keep the gate shut for `seconds` from now (never shortens an earlier hold), for every instance."""
        until = self._clock() + max(seconds, 0.0)
        if until <= self._open_at:
            return
        self._open_at = until
        if self._shared is not None:
            await self._quietly(self._shared.extend_hold(self.face, until))

    def closed_for(self) -> float:
        return max(self._open_at - self._clock(), 0.0)

    async def wait(self) -> None:
        """Return once the gate is open; a hold made while waiting (here or elsewhere) is waited out too."""
        while True:
            await self._read_shared()
            if (delay := self.closed_for()) <= 0:
                return
            await self._sleep(delay)

    async def _read_shared(self) -> None:
        if self._shared is None or not self._stale():
            return
        async with self._reading:
            if not self._stale():  # another caller read them while this one waited for the lock
                return
            holds = await self._quietly(self._shared.read_holds())
            self._read_at = self._clock()
            if holds is not None:
                self._open_at = max(self._open_at, holds.get(self.face, 0.0))

    def _stale(self) -> bool:
        return self._read_at is None or self._clock() - self._read_at >= self._refresh

    async def _quietly(self, call: Awaitable[T]) -> T | None:
        """The shared store is a help, never a reason to fail a call: without it the gate is this instance's."""
        try:
            result = await call
        except Exception as error:
            if not self._store_failing:
                logger.warning("throttle holds are not shared (%s); this instance keeps its own", type(error).__name__)
            self._store_failing = True
            return None
        if self._store_failing:
            logger.warning("throttle holds are shared again")
            self._store_failing = False
        return result

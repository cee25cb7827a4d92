"""Waiting for an event, not timing it: the guard only stops a test that would otherwise hang.

No test asserts how fast something is (docs/performance.md: figures belong to the benchmarks). A
test that promises "returns at once instead of waiting for its timeout" gives the code a timeout
far beyond the guard, so the code can only pass by returning on the event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

HANG_GUARD_SECONDS = 120.0  # far above any healthy run on a loaded machine
NEVER_SECONDS = 3600.0  # a timeout handed to the code under test: reaching it means the event never came


def returns(call: Callable[[], T], *, what: str) -> T:
    """call()'s result, run in a daemon thread; fails when it has not returned within the hang guard."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as error:  # handed back to the test's thread below
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_SECONDS)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {HANG_GUARD_SECONDS:.0f} s: it waits for its timeout")
    if errors:
        raise errors[0]
    return results[0]

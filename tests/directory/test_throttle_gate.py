"""The throttle gate: one per face for every instance of the app, through a store they all read."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytest

from shared.directory.throttle import ThrottleGate


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Store:
    """What every instance reads: the holds, and how often they were read."""

    def __init__(self) -> None:
        self.holds: dict[str, float] = {}
        self.reads = 0
        self.failing = False

    async def read_holds(self) -> Mapping[str, float]:
        self.reads += 1
        if self.failing:
            raise ConnectionError("the store is down")
        return dict(self.holds)

    async def extend_hold(self, face: str, until: float) -> None:
        if self.failing:
            raise ConnectionError("the store is down")
        self.holds[face] = max(self.holds.get(face, 0.0), until)


def instance(face: str, store: Store, clock: Clock, refresh: float = 0.25) -> ThrottleGate:
    return ThrottleGate(face, shared=store, refresh_seconds=refresh, clock=clock, sleep=clock.sleep)


async def test_a_hold_on_one_instance_holds_every_instance_on_that_face() -> None:
    clock, store = Clock(), Store()
    throttled, other, graph = (
        instance("exchange", store, clock),
        instance("exchange", store, clock),
        instance("graph", store, clock),
    )
    await throttled.hold(3)
    assert store.holds == {"exchange": 1_003.0}
    await other.wait()  # never throttled itself, it waits out the other's hold
    assert clock.slept == [3]
    await graph.wait()  # another face is not held
    assert clock.slept == [3]


async def test_the_shared_holds_are_read_at_most_once_per_refresh_period() -> None:
    clock, store = Clock(), Store()
    gate = instance("exchange", store, clock, refresh=0.25)
    for _ in range(5):
        await gate.wait()
    assert store.reads == 1
    clock.now += 0.25
    await gate.wait()
    assert store.reads == 2


async def test_a_hold_made_elsewhere_while_waiting_is_waited_out_too() -> None:
    clock, store = Clock(), Store()
    gate = instance("exchange", store, clock)
    await gate.hold(1)
    store.holds["exchange"] = 1_004.0  # another instance was told to wait longer meanwhile
    await gate.wait()
    assert clock.now == 1_004.0


async def test_without_the_store_each_instance_keeps_its_own_gate(caplog: pytest.LogCaptureFixture) -> None:
    clock, store = Clock(), Store()
    store.failing = True
    gate = instance("exchange", store, clock)
    with caplog.at_level(logging.WARNING, logger="onboarding.throttle"):
        await gate.hold(2)
        await gate.wait()
        await gate.hold(1)
    assert clock.slept == [2]
    assert [r.getMessage() for r in caplog.records] == [
        "throttle holds are not shared (ConnectionError); this instance keeps its own"
    ]

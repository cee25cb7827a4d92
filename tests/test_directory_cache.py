"""The per-process directory cache (shared/directory/cache.py): what it keeps, for how long, and what never."""

from __future__ import annotations

import asyncio

import pytest

from shared.contracts import GroupKind
from shared.directory.cache import CachingExchangeDirectory, CachingGraphDirectory, TtlCache
from shared.directory.errors import ThrottledError
from tests.fakes import FailureScript, FakeExchange, FakeGraph


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_found_group_is_remembered_for_the_ttl_only(clock: Clock) -> None:
    script = FailureScript()
    fake = FakeGraph(script)
    group = fake.add_group(GroupKind.DISTRIBUTION, "partners@contoso.com")
    graph = CachingGraphDirectory(fake, 60, clock=clock)
    assert await graph.find_group_by_mail("Partners@contoso.com") == group
    assert await graph.find_group_by_mail("partners@CONTOSO.com") == group
    assert await graph.get_group(group.id) == group
    assert script.calls == ["find_group_by_mail", "get_group"]
    clock.now += 61
    await graph.find_group_by_mail("partners@contoso.com")
    assert script.calls.count("find_group_by_mail") == 2


async def test_a_missing_group_is_asked_again_every_time(clock: Clock) -> None:
    script = FailureScript()
    fake = FakeGraph(script)
    graph = CachingGraphDirectory(fake, 60, clock=clock)
    assert await graph.find_group_by_mail("new@contoso.com") is None
    created = fake.add_group(GroupKind.DISTRIBUTION, "new@contoso.com")  # made a moment later
    assert await graph.find_group_by_mail("new@contoso.com") == created


async def test_a_failure_is_not_remembered(clock: Clock) -> None:
    script = FailureScript()
    fake = FakeExchange(script)
    exchange = CachingExchangeDirectory(fake, 60, clock=clock)
    script.fail_next("get_accepted_domains", ThrottledError("slow down", face="exchange", status=429))
    with pytest.raises(ThrottledError):
        await exchange.get_accepted_domains()
    assert await exchange.get_accepted_domains() == {"contoso.com"}
    assert await exchange.get_accepted_domains() == {"contoso.com"}
    assert script.calls.count("get_accepted_domains") == 2


async def test_concurrent_misses_share_one_call(clock: Clock) -> None:
    calls = 0
    release = asyncio.Event()

    async def load() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "answer"

    cache: TtlCache[str] = TtlCache(60, clock=clock)
    waiters = [asyncio.create_task(cache.get("k", load)) for _ in range(8)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == ["answer"] * 8
    assert calls == 1


async def test_a_zero_ttl_keeps_nothing(clock: Clock) -> None:
    script = FailureScript()
    exchange = CachingExchangeDirectory(FakeExchange(script), 0, clock=clock)
    await exchange.get_accepted_domains()
    await exchange.get_accepted_domains()
    assert script.calls == ["get_accepted_domains"] * 2

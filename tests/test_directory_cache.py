"""The per-process directory cache (shared/directory/cache.py): what it keeps, for how long, and what never."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts import GroupKind
from shared.directory.cache import (
    SUBSCRIBERS_SHARE_SECONDS,
    CachingExchangeDirectory,
    CachingGraphDirectory,
    SharedSubscriberReads,
    TtlCache,
)
from shared.directory.errors import ThrottledError
from shared.directory.ports import GroupMember, SenderRestrictions, TraceEntry
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
    exchange = CachingExchangeDirectory(fake, 60, max_trace_rows=5000, clock=clock)
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
    exchange = CachingExchangeDirectory(FakeExchange(script), 0, max_trace_rows=5000, clock=clock)
    await exchange.get_accepted_domains()
    await exchange.get_accepted_domains()
    assert script.calls == ["get_accepted_domains"] * 2


def _trace(exchange: FakeExchange, recipient: str, minutes_ago: float, status: str = "Delivered") -> None:
    exchange.traces.append(TraceEntry(f"<{recipient}>", recipient, status, NOW - timedelta(minutes=minutes_ago)))


NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
WELCOME = "welcome@contoso.com"


async def test_many_recipients_checks_share_one_trace_query(clock: Clock) -> None:
    script = FailureScript()
    fake = FakeExchange(script)
    for n in range(200):
        _trace(fake, f"p{n}@fabrikam.example", minutes_ago=n % 50)
    exchange = CachingExchangeDirectory(fake, 60, max_trace_rows=5000, trace_share_seconds=120, clock=clock)
    answers = [
        await exchange.message_trace(WELCOME, f"P{n}@Fabrikam.example", NOW - timedelta(hours=1), NOW)
        for n in range(200)
    ]
    assert all(len(rows) == 1 and rows[0].recipient == f"p{n}@fabrikam.example" for n, rows in enumerate(answers))
    assert script.calls.count("message_trace") <= 2  # the first check's window, then one wide enough for all
    clock.now += 121
    await exchange.message_trace(WELCOME, "p0@fabrikam.example", NOW - timedelta(hours=1), NOW)
    assert script.calls.count("message_trace") <= 3


async def test_a_shared_answer_gives_each_recipient_only_its_own_window(clock: Clock) -> None:
    fake = FakeExchange(FailureScript())
    _trace(fake, "ann@fabrikam.example", minutes_ago=90, status="Failed")  # an earlier message, before this one
    _trace(fake, "ann@fabrikam.example", minutes_ago=5)
    exchange = CachingExchangeDirectory(fake, 60, max_trace_rows=5000, clock=clock)
    await exchange.message_trace(WELCOME, "bob@fabrikam.example", NOW - timedelta(hours=2), NOW)  # widens the window
    rows = await exchange.message_trace(WELCOME, "ann@fabrikam.example", NOW - timedelta(minutes=30), NOW)
    assert [row.status for row in rows] == ["Delivered"]


async def test_a_truncated_shared_answer_asks_for_the_recipient_alone(clock: Clock) -> None:
    script = FailureScript()
    fake = FakeExchange(script)
    for n in range(3):
        _trace(fake, f"p{n}@fabrikam.example", minutes_ago=1)
    exchange = CachingExchangeDirectory(fake, 60, max_trace_rows=3, clock=clock)
    rows = await exchange.message_trace(WELCOME, "p1@fabrikam.example", NOW - timedelta(hours=1), NOW)
    assert len(rows) == 1
    assert script.calls.count("message_trace") == 2  # the shared query came back full: one of its own


async def test_a_burst_into_one_group_changes_its_sender_setting_once(clock: Clock) -> None:
    script = FailureScript()
    exchange = CachingExchangeDirectory(FakeExchange(script), 60, max_trace_rows=5000, clock=clock)
    changes = [
        exchange.set_require_sender_authentication("Partners@contoso.com", False, unified=False) for _ in range(6)
    ]
    await asyncio.gather(*changes)
    await exchange.set_require_sender_authentication("partners@contoso.com", False, unified=False)  # a moment later
    assert script.calls.count("set_require_sender_authentication") == 1
    await exchange.set_require_sender_authentication("partners@contoso.com", True, unified=False)  # turned back
    await exchange.set_require_sender_authentication("partners@contoso.com", False, unified=False)  # so made again
    assert script.calls.count("set_require_sender_authentication") == 3
    clock.now += 11  # past the burst: a change asked for now is made
    await exchange.set_require_sender_authentication("partners@contoso.com", False, unified=False)
    assert script.calls.count("set_require_sender_authentication") == 4


async def test_a_read_after_the_change_that_finds_it_undone_lets_the_next_change_through(clock: Clock) -> None:
    """Within the burst's seconds an administrator turns sender authentication back on: a caller that reads the
    group after the change and finds it on again (the drift watch, a later request) must really change it."""
    script = FailureScript()
    fake = FakeExchange(script)
    exchange = CachingExchangeDirectory(fake, 60, max_trace_rows=5000, clock=clock)
    await exchange.set_require_sender_authentication("partners@contoso.com", False, unified=False)
    clock.now += 1
    fake.restrictions["partners@contoso.com"] = SenderRestrictions(True, (), (), False)  # an administrator
    found = await exchange.get_sender_restrictions("Partners@contoso.com", unified=False)
    assert found.require_sender_authentication
    await exchange.set_require_sender_authentication("partners@contoso.com", False, unified=False)
    assert script.calls.count("set_require_sender_authentication") == 2
    assert not fake.restrictions["partners@contoso.com"].require_sender_authentication
    # A read that finds the change in force keeps it shared.
    await exchange.get_sender_restrictions("partners@contoso.com", unified=False)
    await exchange.set_require_sender_authentication("partners@contoso.com", False, unified=False)
    assert script.calls.count("set_require_sender_authentication") == 2


FALCON = "project-falcon@contoso.com"


class SlowSubscribers(FakeExchange):
    """Get-UnifiedGroupLinks that answers when `release` is set: what it lists is read when it answers."""

    def __init__(self) -> None:
        super().__init__(FailureScript())
        self.release = asyncio.Event()
        self.release.set()
        self.reads = 0

    async def list_unified_group_subscribers(self, group: str) -> list[GroupMember]:
        self.reads += 1
        listed = [GroupMember(m, m, None) for m in self.subscribers[group]]  # as of the read's start
        await self.release.wait()
        return listed


def _is(identity: str) -> Callable[[GroupMember], bool]:
    return lambda member: member.identity == identity


async def test_a_burst_of_subscription_checks_of_one_group_shares_reads(clock: Clock) -> None:
    """Get-UnifiedGroupLinks lists the whole group: 40 checks at once cost one read each no longer."""
    exchange = SlowSubscribers()
    exchange.subscribers[FALCON] = {f"guest-{n}" for n in range(40)}
    shared = SharedSubscriberReads(exchange, clock=clock)
    exchange.release.clear()
    checks = [asyncio.create_task(shared.has(FALCON, _is(f"guest-{n}"))) for n in range(40)]
    await asyncio.sleep(0)
    clock.now += 0.1  # the first read began; the other checks asked before it answers
    exchange.release.set()
    assert await asyncio.gather(*checks) == [True] * 40
    assert exchange.reads == 1  # each asked no later than the read began (one clock reading)


async def test_no_is_answered_only_by_a_read_begun_after_the_check_asked(clock: Clock) -> None:
    """A guest added while a read was under way is not in it: the check after the add reads again."""
    exchange = SlowSubscribers()
    shared = SharedSubscriberReads(exchange, clock=clock)
    exchange.release.clear()
    before = asyncio.create_task(shared.has(FALCON, _is("guest-1")))
    await asyncio.sleep(0)  # its read lists the group as it is now: without guest-1
    clock.now += 0.5
    exchange.subscribers[FALCON].add("guest-1")  # added (and subscribed) now, then verified
    after = asyncio.create_task(shared.has(FALCON, _is("guest-1")))
    await asyncio.sleep(0)
    exchange.release.set()
    assert (await before, await after) == (False, True)
    assert exchange.reads == 2


async def test_a_subscriber_seen_lately_needs_no_read_and_a_missing_one_always_does(clock: Clock) -> None:
    exchange = SlowSubscribers()
    exchange.subscribers[FALCON] = {"guest-1"}
    shared = SharedSubscriberReads(exchange, clock=clock)
    assert await shared.has(FALCON, _is("guest-1"))
    clock.now += SUBSCRIBERS_SHARE_SECONDS - 1
    assert await shared.has(FALCON.upper(), _is("guest-1"))  # the same group, by any case
    assert exchange.reads == 1
    assert not await shared.has(FALCON, _is("guest-2"))  # not seen: asked again, never taken from memory
    clock.now += 0.1
    assert not await shared.has(FALCON, _is("guest-2"))
    assert exchange.reads == 3
    clock.now += SUBSCRIBERS_SHARE_SECONDS
    exchange.subscribers[FALCON].clear()  # unsubscribed by an administrator: an old read no longer answers
    assert not await shared.has(FALCON, _is("guest-1"))


async def test_a_failed_read_fails_its_check_and_the_next_check_reads_again(clock: Clock) -> None:
    script = FailureScript()
    fake = FakeExchange(script)
    fake.subscribers[FALCON] = {"guest-1"}
    exchange = CachingExchangeDirectory(fake, 60, max_trace_rows=5000, clock=clock)
    script.fail_next("list_unified_group_subscribers", ThrottledError("slow down", face="exchange", status=429))
    with pytest.raises(ThrottledError):
        await exchange.is_unified_group_subscriber(FALCON, _is("guest-1"))
    assert await exchange.is_unified_group_subscriber(FALCON, _is("guest-1"))
    assert script.calls.count("list_unified_group_subscribers") == 2

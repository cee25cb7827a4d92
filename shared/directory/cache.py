"""A short per-process memory for the directory answers every request asks again.

Each create-contact resolves its group and reads the tenant's accepted domains; both change in the
tenant perhaps once a month, yet cost two directory calls per request, and those calls count
against the same per-tenant throttle as the writes. The wrappers below implement the ports and keep
those answers for `ttl` seconds in this process (a Functions instance), nothing else.

Get-UnifiedGroupLinks has no filter, so a guest's subscription check reads the group's whole subscriber
list (a page per 1,000): checks of one group share one read that began after each of them asked, and
a subscriber found in a read begun within SUBSCRIBERS_SHARE_SECONDS needs no new one (SharedSubscriberReads).

A change that many requests make alike (turning a group's RequireSenderAuthenticationEnabled off for
a burst of requests into it) is made once; its answer serves the others for SENDER_CHANGE_SHARE_SECONDS.

Safety: only answers that exist are kept ("no such group" is asked again every time, so a group
created a second ago is found); concurrent misses for one key share one call. Staleness is bounded
by the TTL: a group renamed, re-kinded or deleted within it is seen as before; the write that
follows (Add-DistributionGroupMember, POST members/$ref) then fails and the request is retried or
dead-lettered as it would be after a change right after the lookup. See docs/performance.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from shared.directory.ports import (
    DirectoryGroup,
    DirectoryUser,
    EntraMembers,
    ExchangeDirectory,
    ExchangeMembers,
    GraphDirectory,
    GroupMember,
    MailContact,
    SenderRestrictions,
    TraceEntry,
    Warnings,
)

V = TypeVar("V")
MAX_ENTRIES = 1024  # groups a process remembers; beyond this the oldest are forgotten
# A burst of requests into one group arrives within seconds: one change of its sender setting serves them
# (docs/performance.md). A read begun after the change that finds it undone ends the sharing at once.
SENDER_CHANGE_SHARE_SECONDS = 10.0
# Get-MessageTraceV2 allows 100 queries per tenant in a running 5 minutes (docs/permissions.md). One
# query per welcome sender every TRACE_SHARE_SECONDS answers every recipient's check in this process:
# 2.5 queries per 5 minutes per instance, however many onboardings it verifies.
TRACE_SHARE_SECONDS = 120.0
TRACE_MAX_WINDOW = timedelta(days=10)  # Get-MessageTraceV2's longest query
TRACE_FORGET_SECONDS = 2 * 3600.0  # a check not repeated for this long (> the longest check interval) is done
MAX_TRACED = 10_000  # recipients whose window a process remembers
# A subscriber seen in a read begun this recently counts as subscribed (Exchange subscribes a guest when it
# is added; one unsubscribed by hand within this time is seen by the next read, or the drift watch).
SUBSCRIBERS_SHARE_SECONDS = 30.0


class TtlCache(Generic[V]):
    """Answers kept for `ttl` seconds; None answers are never kept; one call in flight per key."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}
        self._in_flight: dict[str, asyncio.Future[V | None]] = {}

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def forget_if_kept_before(self, key: str, moment: float) -> None:
        """Forget the answer for `key` if it was kept before `moment` (a clock reading)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] - self._ttl < moment:
            self._entries.pop(key, None)

    async def get(self, key: str, load: Callable[[], Awaitable[V | None]]) -> V | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        if (waiting := self._in_flight.get(key)) is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            value = await load()
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here, so an unawaited future logs nothing
            raise
        finally:
            del self._in_flight[key]
        if value is not None and self._ttl > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (self._clock() + self._ttl, value)
        future.set_result(value)
        return value


class CachingGraphDirectory:
    """GraphDirectory with group lookups remembered; every other call goes straight through."""

    def __init__(self, inner: GraphDirectory, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self._groups: TtlCache[DirectoryGroup] = TtlCache(ttl, clock=clock)

    async def get_group(self, group_id: str) -> DirectoryGroup | None:
        return await self._groups.get(f"id:{group_id.lower()}", lambda: self.inner.get_group(group_id))

    async def find_group_by_mail(self, address: str) -> DirectoryGroup | None:
        return await self._groups.get(f"mail:{address.lower()}", lambda: self.inner.find_group_by_mail(address))

    async def find_user_by_mail(self, address: str) -> DirectoryUser | None:
        return await self.inner.find_user_by_mail(address)

    async def find_user_for_invitation(self, address: str) -> DirectoryUser | None:
        return await self.inner.find_user_for_invitation(address)

    async def invite_guest(
        self, address: str, display_name: str, redirect_url: str, sponsors: tuple[str, ...] = ()
    ) -> DirectoryUser:
        return await self.inner.invite_guest(address, display_name, redirect_url, sponsors)

    async def add_group_member(self, group_id: str, object_id: str) -> None:
        await self.inner.add_group_member(group_id, object_id)

    async def remove_group_member(self, group_id: str, object_id: str) -> None:
        await self.inner.remove_group_member(group_id, object_id)

    async def list_group_member_ids(self, group_id: str) -> frozenset[str]:
        return await self.inner.list_group_member_ids(group_id)

    async def contact_group_ids(self, contact_id: str) -> frozenset[str]:
        return await self.inner.contact_group_ids(contact_id)

    async def group_members_within(self, group_id: str, max_pages: int) -> EntraMembers:
        return await self.inner.group_members_within(group_id, max_pages)

    async def user_account_enabled(self, user_id: str) -> bool | None:
        return await self.inner.user_account_enabled(user_id)

    async def is_group_member(self, group_id: str, object_id: str) -> bool:
        return await self.inner.is_group_member(group_id, object_id)

    async def is_contact_member(self, group_id: str, contact_id: str) -> bool:
        return await self.inner.is_contact_member(group_id, contact_id)

    async def send_mail(self, sender: str, recipient: str, subject: str, text: str) -> None:
        await self.inner.send_mail(sender, recipient, subject, text)


class CachingExchangeDirectory:
    """ExchangeDirectory with the accepted domains remembered and message trace shared between checks
    (SharedMessageTrace); every other call goes straight through."""

    def __init__(
        self,
        inner: ExchangeDirectory,
        ttl: float,
        *,
        max_trace_rows: int,
        trace_share_seconds: float = TRACE_SHARE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._clock = clock
        self._domains: TtlCache[frozenset[str]] = TtlCache(ttl, clock=clock)
        self._sender_changes: TtlCache[Warnings] = TtlCache(min(ttl, SENDER_CHANGE_SHARE_SECONDS), clock=clock)
        self._traces = SharedMessageTrace(
            inner, share_seconds=trace_share_seconds, max_rows=max_trace_rows, clock=clock
        )
        # A subscriber seen lately is remembered no longer than any answer (TTL 0: every check reads).
        self._subscribers = SharedSubscriberReads(inner, share_seconds=min(SUBSCRIBERS_SHARE_SECONDS, ttl), clock=clock)

    async def get_accepted_domains(self) -> frozenset[str]:
        # A tenant always has at least its initial domain: an empty answer is not worth keeping.
        domains = await self._domains.get("accepted-domains", self._nonempty_domains)
        return domains or frozenset()

    async def _nonempty_domains(self) -> frozenset[str] | None:
        return await self.inner.get_accepted_domains() or None

    async def find_mail_contact(self, address: str) -> MailContact | None:
        return await self.inner.find_mail_contact(address)

    async def new_mail_contact(
        self,
        *,
        name: str,
        external_email_address: str,
        display_name: str,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> MailContact:
        return await self.inner.new_mail_contact(
            name=name,
            external_email_address=external_email_address,
            display_name=display_name,
            first_name=first_name,
            last_name=last_name,
        )

    async def get_mail_contact(self, identity: str) -> MailContact | None:
        return await self.inner.get_mail_contact(identity)

    async def stamp_mail_contact(self, identity: str, value: str) -> None:
        await self.inner.stamp_mail_contact(identity, value)

    async def set_contact_names(
        self, identity: str, *, display_name: str, first_name: str | None, last_name: str | None
    ) -> None:
        await self.inner.set_contact_names(
            identity, display_name=display_name, first_name=first_name, last_name=last_name
        )

    async def remove_mail_contact(self, identity: str) -> None:
        await self.inner.remove_mail_contact(identity)

    async def add_distribution_group_member(self, group: str, member: str, *, security_group: bool = False) -> Warnings:
        return await self.inner.add_distribution_group_member(group, member, security_group=security_group)

    async def remove_distribution_group_member(
        self, group: str, member: str, *, security_group: bool = False
    ) -> Warnings:
        return await self.inner.remove_distribution_group_member(group, member, security_group=security_group)

    async def list_distribution_group_members(self, group: str) -> list[GroupMember]:
        return await self.inner.list_distribution_group_members(group)

    async def distribution_group_members_within(self, group: str, max_pages: int) -> ExchangeMembers:
        return await self.inner.distribution_group_members_within(group, max_pages)

    async def list_unified_group_subscribers(self, group: str) -> list[GroupMember]:
        return await self.inner.list_unified_group_subscribers(group)

    async def is_unified_group_subscriber(self, group: str, is_them: Callable[[GroupMember], bool]) -> bool:
        return await self._subscribers.has(group, is_them)

    async def get_sender_restrictions(self, group: str, *, unified: bool) -> SenderRestrictions:
        asked_at = self._clock()
        restrictions = await self.inner.get_sender_restrictions(group, unified=unified)
        # Asked after our change was made and finding it undone: someone turned it back (an administrator,
        # within the burst's seconds), so the next change asked for must really be made, not shared.
        undone = f"{group.lower()}:{not restrictions.require_sender_authentication}"
        self._sender_changes.forget_if_kept_before(undone, asked_at)
        return restrictions

    async def set_require_sender_authentication(
        self, group: str, enabled: bool, *, unified: bool, security_group: bool = False
    ) -> Warnings:
        # A burst of requests into one group all find it closed to external senders: one change serves
        # them all (concurrent calls share it; later ones within seconds are answered by it).
        group_key = group.lower()
        self._sender_changes.forget(f"{group_key}:{not enabled}")  # the opposite change is not in force any more
        return (
            await self._sender_changes.get(
                f"{group_key}:{enabled}",
                lambda: self.inner.set_require_sender_authentication(
                    group, enabled, unified=unified, security_group=security_group
                ),
            )
            or ()
        )

    async def message_trace(
        self, sender: str, recipient: str | None, start: datetime, end: datetime
    ) -> list[TraceEntry]:
        if recipient is None:
            return await self.inner.message_trace(sender, recipient, start, end)
        return await self._traces.for_recipient(sender, recipient, start, end)


@dataclass(frozen=True)
class _TraceAnswer:
    start: datetime
    end: datetime
    entries: tuple[TraceEntry, ...]
    truncated: bool  # as many rows as one query returns: some recipient may be missing


class SharedMessageTrace:
    """Every recipient's trace check answered from one sender-wide Get-MessageTraceV2 per TRACE_SHARE_SECONDS.

    The query's window starts at the earliest start a check asked for in the last TRACE_FORGET_SECONDS,
    so the checks of one sender converge on one query. An answer with TRACE_MAX_ROWS rows may miss a
    recipient: that recipient is asked for alone. A recipient's rows are those of the shared answer
    within its own window, so the answer is the one a query of its own would give, up to
    TRACE_SHARE_SECONDS old (the next check sees newer rows).
    """

    def __init__(
        self,
        inner: ExchangeDirectory,
        *,
        share_seconds: float = TRACE_SHARE_SECONDS,
        max_rows: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._max_rows = max_rows
        self._clock = clock
        self._answers: TtlCache[_TraceAnswer] = TtlCache(share_seconds, clock=clock)
        self._asked: dict[tuple[str, str], tuple[datetime, float]] = {}  # (sender, recipient) -> start, when asked

    async def for_recipient(self, sender: str, recipient: str, start: datetime, end: datetime) -> list[TraceEntry]:
        sender_key, recipient_key = sender.lower(), recipient.lower()
        self._remember(sender_key, recipient_key, start)
        answer = await self._answers.get(sender_key, lambda: self._query(sender, sender_key, end))
        if answer is None or answer.truncated or start < answer.start:
            return await self._inner.message_trace(sender, recipient, start, end)
        return [
            entry
            for entry in answer.entries
            if entry.recipient.lower() == recipient_key and start <= entry.received <= end
        ]

    def _remember(self, sender_key: str, recipient_key: str, start: datetime) -> None:
        now = self._clock()
        if len(self._asked) >= MAX_TRACED or (sender_key, recipient_key) not in self._asked:
            self._asked = {key: seen for key, seen in self._asked.items() if now - seen[1] < TRACE_FORGET_SECONDS}
            while len(self._asked) >= MAX_TRACED:
                self._asked.pop(next(iter(self._asked)))
        self._asked[(sender_key, recipient_key)] = (start, now)

    async def _query(self, sender: str, sender_key: str, end: datetime) -> _TraceAnswer:
        starts = [start for (key, _), (start, _) in self._asked.items() if key == sender_key]
        start = max(min(starts), end - TRACE_MAX_WINDOW)
        entries = await self._inner.message_trace(sender, None, start, end)
        return _TraceAnswer(start, end, tuple(entries), truncated=len(entries) >= self._max_rows)


class SharedSubscriberReads:
    """Subscription checks of one Microsoft 365 group answered by shared Get-UnifiedGroupLinks reads.

    A check is answered "no" only by a read that began after it asked (so a guest added before the check
    is in it, once Exchange has caught up); reads of one group run one at a time, each serving every
    check that asked before it began, so a burst costs a read per read's duration, not one per check. A
    check whose subscriber is in a read begun within `share_seconds` is answered "yes" without a read.
    """

    def __init__(
        self,
        inner: ExchangeDirectory,
        *,
        share_seconds: float = SUBSCRIBERS_SHARE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._share_seconds = share_seconds
        self._clock = clock
        self._reads: dict[str, tuple[float, tuple[GroupMember, ...]]] = {}  # group -> (began, subscribers)
        self._locks: dict[str, asyncio.Lock] = {}

    async def has(self, group: str, is_them: Callable[[GroupMember], bool]) -> bool:
        key, asked = group.lower(), self._clock()
        last = self._reads.get(key)
        if last is not None and asked - last[0] < self._share_seconds and any(map(is_them, last[1])):
            return True
        return any(map(is_them, await self._read_begun_after(key, group, asked)))

    async def _read_begun_after(self, key: str, group: str, asked: float) -> tuple[GroupMember, ...]:
        async with self._lock(key):
            last = self._reads.get(key)
            if last is not None and last[0] >= asked:  # read by a check that waited before this one
                return last[1]
            began = self._clock()
            subscribers = tuple(await self._inner.list_unified_group_subscribers(group))
            self._reads.pop(key, None)  # re-inserted last: the oldest group is the first forgotten
            self._reads[key] = (began, subscribers)
            if len(self._reads) > MAX_ENTRIES:
                self._reads.pop(next(iter(self._reads)))
            return subscribers

    def _lock(self, key: str) -> asyncio.Lock:
        if key not in self._locks and len(self._locks) >= MAX_ENTRIES:
            self._locks = {k: lock for k, lock in self._locks.items() if lock.locked()}
        return self._locks.setdefault(key, asyncio.Lock())

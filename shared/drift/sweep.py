"""The timer's sweep (docs/drift.md): pages of the roster fanned out as check messages on queue `drift`.

The timer starts a period's sweep once (a Sweep record) and sends the first page message. A page message
reads one page of the roster after the sweep's cursor, sends one check message per run of one group's
people (at most CHECK_MAX), moves the cursor, and then schedules the next page after a spacing that keeps
the sweep at ONBOARDING_DRIFT_PER_MINUTE people a minute. No invocation holds the roster.

Resuming: a page moves the cursor before it sends the next page, so no page message exists for a page
the cursor has not reached. A page redelivered before it moved the cursor does its page again with the
same MessageIds (Service Bus drops the duplicates within its window; beyond it, the roster's once-per-period
record of a check does); one redelivered after it moved the cursor sends the next page again (dropped as a
duplicate if it had gone out) and does nothing else. (The other order, next page first, lost the sweep: a
host killed between the two left a next page that came early, found the cursor behind it and did nothing,
and the page's redelivery sent it again under the same MessageId, which duplicate detection dropped.)

The queue is outside input: a page acts only for the current period, on a sweep the timer started, at
that sweep's cursor, so a forged one can at most bring a page forward, never check anyone twice.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Self

from azure.servicebus import ServiceBusMessage
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator

from shared.drift.model import Membership, MembershipKey, PeriodId, Roster, Sweep, period_id
from shared.envelope import JSON
from shared.outbox import Outbox
from shared.queues import DRIFT_QUEUE

logger = logging.getLogger("onboarding.drift")

CHECK_MAX = 100  # people one check message names: one group's reads serve them, one invocation checks them
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GroupId = Annotated[str, StringConstraints(pattern=r"^[0-9a-z-]{1,64}$")]  # as a membership key starts


class DriftPage(BaseModel):
    """Fan out the roster after key `after` (None: from the start) for period `period`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["page"]
    period: PeriodId
    after: MembershipKey | None = None


class DriftCheck(BaseModel):
    """Check these people of group `group` for period `period`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["check"]
    period: PeriodId
    group: GroupId
    keys: tuple[MembershipKey, ...] = Field(min_length=1, max_length=CHECK_MAX)

    @model_validator(mode="after")
    def _one_group_each_once(self) -> Self:
        if any(not key.startswith(f"{self.group}:") for key in self.keys):
            raise ValueError("every key must be of the message's group")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("a key is named twice")
        return self


DriftWork = Annotated[DriftPage | DriftCheck, Field(discriminator="kind")]
DRIFT_WORK: TypeAdapter[DriftPage | DriftCheck] = TypeAdapter(DriftWork)


def period_start(now: datetime, period: timedelta) -> datetime:
    """The start of the period `now` is in: periods are multiples of `period` since 1970-01-01 UTC."""
    return _EPOCH + (now - _EPOCH) // period * period


def check_runs(period: str, members: Sequence[Membership]) -> list[DriftCheck]:
    """One check per run of one group's people (the roster sorts by group), at most CHECK_MAX each."""
    checks = []
    for group, run in itertools.groupby(members, key=lambda membership: membership.key.split(":", 1)[0]):
        keys = [membership.key for membership in run]
        for start in range(0, len(keys), CHECK_MAX):
            checks.append(
                DriftCheck(kind="check", period=period, group=group, keys=tuple(keys[start : start + CHECK_MAX]))
            )
    return checks


def work_message(work: DriftPage | DriftCheck) -> ServiceBusMessage:
    """Its MessageId names the period and the first key, so the same work sent again within the
    duplicate-detection window is kept once."""
    first = (work.after or "first") if isinstance(work, DriftPage) else work.keys[0]
    message_id = f"drift/{work.period}/{work.kind}/{first}"  # at most 126 characters: within the 128 allowed
    return ServiceBusMessage(work.model_dump_json().encode(), message_id=message_id, content_type=JSON)


@dataclass(frozen=True)
class DriftSweeper:
    """Starts a period's sweep (the timer) and fans out its pages (page messages of queue `drift`)."""

    roster: Roster
    outbox: Outbox
    period: timedelta
    page_size: int
    per_minute: int
    clock: Callable[[], datetime]

    def current_period(self) -> str:
        return period_id(period_start(self.clock(), self.period))

    async def start(self) -> str:
        """The timer: start this period's sweep, or send its page again at the cursor (a page message
        lost to the dead-letter queue otherwise stops the sweep until the next period)."""
        period = self.current_period()
        sweep = await self.roster.sweep(period)
        if sweep is None:
            sweep = Sweep(period=period, started_at=self.clock())
            await self.roster.keep_sweep(sweep)
            done = "started"
        elif sweep.fanned_out_at is not None:
            return "fanned out already"
        else:
            done = "resumed"
        await self.outbox.send(DRIFT_QUEUE, work_message(DriftPage(kind="page", period=period, after=sweep.cursor)))
        logger.info("drift sweep of period %s %s at %s", period, done, sweep.cursor or "the start")
        return done

    async def fan_out(self, page: DriftPage) -> str:
        """One page: what it did, in a word or two (for the log and the tests)."""
        if page.period != self.current_period():
            return "not the current period"
        sweep = await self.roster.sweep(page.period)
        if sweep is None:
            return "no sweep started"  # the timer starts a sweep; a page alone starts nothing
        if sweep.fanned_out_at is None and sweep.pages and sweep.moved_from == page.after and sweep.cursor:
            # This page moved the cursor; the host may have stopped before the next page was sent.
            await self._schedule_next(page.period, sweep.cursor, self.page_size)
            return "sent its next page again"
        if sweep.fanned_out_at is not None or sweep.cursor != page.after:
            return "done already"  # a page redelivered after it moved the cursor, or a forged one
        members = await self.roster.memberships(after=page.after, limit=self.page_size)
        for check in check_runs(page.period, members):
            await self.outbox.send(DRIFT_QUEUE, work_message(check))
        now = self.clock()
        last = len(members) < self.page_size
        cursor = members[-1].key if members else page.after
        # Until this is written, a redelivery does this page again (see the module's note).
        await self.roster.keep_sweep(
            sweep.model_copy(
                update={
                    "cursor": cursor,
                    "moved_from": page.after,
                    "pages": sweep.pages + 1,
                    "fanned_out": sweep.fanned_out + len(members),
                    "fanned_out_at": now if last else None,
                }
            )
        )
        if last:
            return "fanned out the last page"
        await self._schedule_next(page.period, members[-1].key, len(members))  # a full page: not empty
        return "fanned out a page"

    async def _schedule_next(self, period: str, cursor: str, people: int) -> None:
        """The page after `cursor`, spaced by the people just sent at ONBOARDING_DRIFT_PER_MINUTE."""
        following = DriftPage(kind="page", period=period, after=cursor)
        await self.outbox.schedule(
            DRIFT_QUEUE, work_message(following), self.clock() + timedelta(minutes=people / self.per_minute)
        )

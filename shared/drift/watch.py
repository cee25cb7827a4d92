"""The trigger's half of the drift watch (docs/drift.md): one message of queue `drift`, read against the roster.

A message only says "look now": a page (shared/drift/sweep.py) or a check of some of one group's people.
The roster says what is true: a check skips whoever is not active, not of that group or checked in this
period already, asks the group checker once for the rest, publishes a drift event for each membership
with a kind of finding that was not open before, and then records the check, the last word: a check
redelivered before it recorded publishes the same event id again (dropped by duplicate detection), one
after finds nobody due.

A checker that fails (throttled, the directory down) records nothing: the message is abandoned and
Service Bus delivers it again, while the throttle gate holds the directory calls back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from shared.drift.events import drift_message
from shared.drift.model import GroupChecker, Roster
from shared.drift.roster import may_record_check, open_findings
from shared.drift.sweep import DRIFT_WORK, DriftCheck, DriftPage, DriftSweeper
from shared.envelope import EnvelopeError, ReceivedMessage, read_body
from shared.outbox import Outbox, send_to_reply_to
from shared.queues import DRIFT_QUEUE
from shared.runner import MessageActions, refuse, settle_off_loop

logger = logging.getLogger("onboarding.drift")


@dataclass(frozen=True)
class DriftWatch:
    """Handles one message of queue `drift`."""

    roster: Roster
    sweeper: DriftSweeper
    checker: GroupChecker
    outbox: Outbox
    outcome_queue: str
    clock: Callable[[], datetime]

    async def run(self, message: ReceivedMessage, actions: MessageActions) -> str:
        """What the message did, in a few words (for the log and the tests)."""
        try:
            work = DRIFT_WORK.validate_json(read_body(message))
        except (EnvelopeError, ValidationError) as error:
            logger.warning("a message on %s that is not drift work was dead-lettered", DRIFT_QUEUE)
            description = f"not a drift page or check: {_first_problem(error)}"
            await refuse(actions, message, who="the drift watch", description=description)
            return "refused"
        try:
            done = await (self.sweeper.fan_out(work) if isinstance(work, DriftPage) else self.check(work))
        except Exception:
            logger.exception("the drift %s could not be done; it comes back", work.kind)
            await settle_off_loop(actions.abandon, message, who="the drift watch")
            raise
        logger.info("drift %s of period %s: %s", work.kind, work.period, done)
        await settle_off_loop(actions.complete, message, who="the drift watch")
        return done

    async def check(self, check: DriftCheck) -> str:
        if check.period != self.sweeper.current_period():
            return "not the current period"
        if await self.roster.sweep(check.period) is None:
            return "no sweep started"  # only a sweep the timer started sends checks
        found = await asyncio.gather(*(self.roster.membership(key) for key in check.keys))
        due = [
            m
            for m in found
            if m is not None and m.group.id.lower() == check.group and may_record_check(m, check.period)
        ]
        if not due:
            return "nobody due"
        findings = await self.checker(due[0].group, due)  # once for the group: its reads are shared
        now, reported, recorded = self.clock(), 0, 0
        for membership in due:
            if membership.key not in findings:
                logger.warning("the checker said nothing of membership %s: not recorded", membership.key)
                continue
            found_now = findings[membership.key]
            was_open = {finding.kind for finding in open_findings(membership)}
            if {finding.kind for finding in found_now} - was_open:
                event = drift_message(membership, found_now, check.period, now)
                await send_to_reply_to(self.outbox, membership.reply_to, self.outcome_queue, event, what="drift event")
                reported += 1
            recorded += await self.roster.record_check(membership.key, check.period, found_now, now) is not None
        return f"checked {recorded}, reported {reported}"


def _first_problem(error: EnvelopeError | ValidationError) -> str:
    """The reason in a line, without the message's content (a ValidationError would quote the input)."""
    if isinstance(error, ValidationError):
        problem = error.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in problem["loc"])
        return f"{where}: {problem['msg']}"[:300] if where else str(problem["msg"])[:300]
    return str(error)[:300]

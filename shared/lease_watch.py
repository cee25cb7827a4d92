"""The trigger's half of leases (docs/leases.md): one wake-up of queue `leases`, read against the lease book.

The wake-up only says "look now"; the lease book says what is true. A wake-up for an end the lease no
longer has (renewed), for a lease that ended early (offboarded) or already expired does nothing.

The lease book is also the backstop: a lease still active well after its end had a wake-up that never
acted (Service Bus dead-lettered it after its deliveries failed, or it was purged), so the timer's
sweep (`catch_up`) sends that end's wake-up again. Acting twice is harmless: the end is settled once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from shared.envelope import EnvelopeError, ReceivedMessage, read_body
from shared.journal.model import Lease, LeaseState
from shared.journal.ports import LeaseBook
from shared.leases import LeaseWake, notice_message, offboard_message, wake_message
from shared.logs import request_context
from shared.outbox import Outbox, send_to_reply_to
from shared.policy import INTAKE_QUEUE, OnboardingPolicy
from shared.queues import LEASE_QUEUE
from shared.runner import MessageActions, refuse, settle_off_loop

logger = logging.getLogger("onboarding.leases")

# A wake-up acts within moments of its time while the app runs; one that has not after this was lost.
CATCH_UP_AFTER = timedelta(minutes=15)
# At most this many wake-ups per sweep (every five minutes): a backlog drains without a burst.
CATCH_UP_MAX = 100


@dataclass(frozen=True)
class LeaseWatch:
    """Handles one wake-up of queue `leases`: reads the lease and acts only when the lease still says so."""

    book: LeaseBook
    outbox: Outbox
    policy: OnboardingPolicy
    outcome_queue: str
    clock: Callable[[], datetime]

    async def run(self, message: ReceivedMessage, actions: MessageActions) -> str:
        """What the wake-up did, in a word (for the log and the tests)."""
        try:
            wake = LeaseWake.model_validate_json(read_body(message))
        except (EnvelopeError, ValidationError) as error:
            logger.warning("a message on %s that is not a lease wake-up was dead-lettered", LEASE_QUEUE)
            description = f"not a lease wake-up: {type(error).__name__}"
            await refuse(actions, message, who="the lease watch", description=description)
            return "refused"
        with request_context(wake.key, message.correlation_id or wake.key):
            try:
                done = await self._act(wake)
            except Exception:
                logger.exception("the lease wake-up could not act; it comes back")
                await settle_off_loop(actions.abandon, message, who="the lease watch")
                raise
            logger.info("lease %s, %s wake-up for the end at %s: %s", wake.key, wake.kind, wake.ends_at, done)
            await settle_off_loop(actions.complete, message, who="the lease watch")
            return done

    async def catch_up(self) -> int:
        """Send again the end's wake-up of every lease still active `CATCH_UP_AFTER` past its end; how many."""
        overdue = await self.book.leases(ending_before=self.clock() - CATCH_UP_AFTER)
        for lease in overdue[:CATCH_UP_MAX]:
            with request_context(lease.key, lease.correlation_id):
                logger.warning(
                    "lease %s is past its end at %s and still active: its wake-up is sent again",
                    lease.key,
                    lease.ends_at,
                )
                await self.outbox.send(LEASE_QUEUE, wake_message(lease, "expiry", catch_up=True))
        return min(len(overdue), CATCH_UP_MAX)

    async def _act(self, wake: LeaseWake) -> str:
        lease = await self.book.lease(wake.key)
        if lease is None or lease.ends_at != wake.ends_at:
            return "superseded"  # renewed (another end) or never kept: an old schedule does nothing
        # The queue is outside input: a wake-up before its time (forged, or a clock ahead) acts on nothing
        # and puts the wake-up back at its time, so a genuine one that came early is not lost either.
        due = lease.notice_at if wake.kind == "notice" else lease.ends_at
        if self.clock() < due:
            await self.outbox.schedule(LEASE_QUEUE, wake_message(lease, wake.kind), due)
            return "early"
        if wake.kind == "notice":
            if lease.state is not LeaseState.ACTIVE:
                return lease.state.value
            await send_to_reply_to(
                self.outbox, lease.reply_to, self.outcome_queue, notice_message(lease, self.clock()), what="notice"
            )
            return "noticed"
        if lease.state is LeaseState.ACTIVE and not await self.book.settle_lease(
            lease.key, lease.ends_at, LeaseState.EXPIRED
        ):
            return "superseded"  # a renewal or an offboard came in between: it wins
        if lease.state is LeaseState.ENDED:
            return "ended"
        # Expired by this wake-up, or by an earlier delivery of it that crashed before sending: (re)send.
        await self.outbox.send(self._intake(lease), offboard_message(lease))
        return "expired"

    def _intake(self, lease: Lease) -> str:
        """The source's own intake queue when the policy binds it to one (else create-contact would refuse)."""
        source = self.policy.sources.get(lease.source_system)
        return source.intake_queue if source is not None else INTAKE_QUEUE

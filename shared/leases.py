"""Leases: memberships that end (docs/leases.md).

An onboarding with an end (the request's `expires_at`, else the group's `default_lease` in the policy)
keeps a lease when it finishes: one per person and group, in the lease book beside the journal, and two
scheduled wake-up messages on queue `leases`, one for the notice and one for the end. The lease book is
the truth; a wake-up only says "look now". When it comes, the lease is read again: a lease that was
renewed (another end), ended early (an offboard) or already expired makes the wake-up do nothing, so an
old schedule can never act. At the end the app sends an offboard request for the person and group
through the source's intake queue, with a request id derived from the lease and its end, and its outcome
is published like any other.

Scheduled messages are durable in Service Bus (they survive restarts and redeployments of the app) and
their time-to-live starts when they appear; duplicate detection cannot guard a wake-up months away
(docs/service-bus-facts.md), the lease book's conditional settling does.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from azure.servicebus import ServiceBusMessage
from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints

from shared.addresses import normal_address
from shared.contracts import (
    LEASE_MAX,
    GroupRef,
    LeaseNotice,
    OnboardingRequest,
    RequestAction,
    ResolvedGroup,
    StageMessage,
)
from shared.decisions import Finish
from shared.envelope import JSON, REQUEST_ID, Delivery, published_event
from shared.journal.model import Lease, LeaseState
from shared.journal.ports import LeaseBook
from shared.outbox import Outbox
from shared.outcomes import DONE, with_warning
from shared.policy import OnboardingPolicy
from shared.queues import LEASE_QUEUE

logger = logging.getLogger("onboarding.leases")

NOTICE_TYPE = "org.m365-external-onboarding.lease.ending.v1"
NOTICE_SOURCE = "/m365-external-onboarding/leases"
NOTICE_SUBJECT = "onboarding.LeaseEnding"
WakeKind = Literal["notice", "expiry"]


def lease_key(external_email: str, group_id: str) -> str:
    """One lease per person and group, however the address is spelt (a digest: no address in a key)."""
    text = f"{normal_address(external_email)}\n{group_id.lower()}"
    return "lease-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _compact(at: datetime) -> str:
    return f"{at:%Y%m%dT%H%M%S%fZ}"


def expiry_request_id(key: str, ends_at: datetime) -> str:
    """The offboard request a lease's end sends: derived from the lease and its end, so a second wake-up for
    the same end sends the same request (Service Bus drops its MessageId) and another end another request."""
    return f"{key}-{_compact(ends_at)}"


def requested_end(
    request: OnboardingRequest, group: ResolvedGroup, accepted_at: datetime, policy: OnboardingPolicy
) -> datetime | None:
    """The request's end, else the group's default lease from when the request was accepted, else none
    (always none for an offboard or an update: only an onboarding starts a lease)."""
    if request.action is not RequestAction.ONBOARD:
        return None
    if request.expires_at is not None:
        return request.expires_at
    default = policy.group_rules(group.id, group.mail).default_lease
    return accepted_at + default if default is not None else None


def end_refusal(request: OnboardingRequest, accepted_at: datetime) -> str | None:
    """Why the request's expires_at cannot be a lease's end (InvalidRequest), or None."""
    if request.expires_at is None:
        return None
    if request.action is not RequestAction.ONBOARD:
        return f"expires_at is for an onboarding; a request to {request.action} cannot carry one."
    if request.expires_at <= accepted_at:
        return "expires_at is not in the future: the membership would end before it began."
    if request.expires_at - accepted_at > LEASE_MAX:
        return f"expires_at is more than {LEASE_MAX.days} days away; send a nearer end and renew it later."
    return None


NO_LEASE_BOOK = (
    "This deployment keeps no journal (ONBOARDING_JOURNAL), where leases are kept, so it could not end the "
    "membership on time: the request is refused rather than granted for good. Send it without expires_at, or "
    "set ONBOARDING_JOURNAL."
)


class LeaseWake(BaseModel):
    """The body of a wake-up on queue `leases`: which lease, for which of its ends, and what to do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Annotated[str, StringConstraints(pattern=r"^lease-[0-9a-f]{32}$")]
    ends_at: AwareDatetime
    kind: WakeKind


@dataclass(frozen=True)
class LeaseKeeper:
    """What verify-delivery keeps when an onboarding finishes: the lease and its two wake-ups."""

    book: LeaseBook
    outbox: Outbox
    notice_before: timedelta
    clock: Callable[[], datetime]

    async def finished(
        self, decision: Finish, message: StageMessage, delivery: Delivery, policy: OnboardingPolicy
    ) -> Finish:
        """The finished onboarding with its lease kept (or an old one ended), said in the outcome."""
        if message.request.action is not RequestAction.ONBOARD or decision.outcome.status not in DONE:
            return decision
        key = lease_key(str(message.request.external_email), message.group.id)
        ends_at = requested_end(message.request, message.group, message.accepted_at, policy)
        if ends_at is None:
            return await self._without_end(decision, key)
        lease = self._lease(key, ends_at, message, delivery)
        await self.book.keep_lease(lease)
        now = self.clock()
        wakes: tuple[tuple[WakeKind, datetime], ...] = (("notice", lease.notice_at), ("expiry", lease.ends_at))
        for kind, at in wakes:
            await self.outbox.schedule(LEASE_QUEUE, wake_message(lease, kind), max(at, now))
        change = (
            f"The membership ends at {lease.ends_at:%Y-%m-%d %H:%M} UTC (lease {key}); a notice is published at "
            f"{lease.notice_at:%Y-%m-%d %H:%M} UTC. A later request for the same person and group renews it."
        )
        outcome = decision.outcome.model_copy(
            update={"changes": (*decision.outcome.changes, change), "expires_at": lease.ends_at}
        )
        return Finish(outcome)

    async def offboarded(self, decision: Finish, request: OnboardingRequest) -> Finish:
        """An offboard that removed (or found no) membership ends the person's lease in that group, so its
        wake-ups do nothing. The offboard a lease's own end sent finds its lease expired already."""
        group = decision.outcome.group
        if group is None or decision.outcome.status not in DONE:
            return decision
        change = "The lease that would have ended the membership at {ends_at:%Y-%m-%d %H:%M} UTC is ended."
        return await self._end(decision, lease_key(str(request.external_email), group.id), change)

    async def _without_end(self, decision: Finish, key: str) -> Finish:
        """An onboarding without an end for someone whose membership had one: it no longer ends."""
        change = "The lease that ended the membership at {ends_at:%Y-%m-%d %H:%M} UTC is removed: it no longer ends."
        return await self._end(decision, key, change)

    async def _end(self, decision: Finish, key: str, change: str) -> Finish:
        """End the person's active lease, saying so (`change`, formatted with its end) in the outcome.

        Neither an offboard nor an onboarding without an end waits for the journal (a journal that is down
        costs a warning, never a retry): when the lease book cannot be used, the outcome says which lease
        may still end the membership. That end's offboard then finds nothing to remove, or, after a later
        onboarding, removes it: `onboard leases` shows it, and an offboard or onboarding sent again ends it."""
        outcome = decision.outcome
        try:
            lease = await self.book.lease(key)
            if lease is None or lease.state is not LeaseState.ACTIVE:
                return decision
            if not await self.book.settle_lease(key, lease.ends_at, LeaseState.ENDED):
                return decision  # settled meanwhile: its end came, or another request changed it
        except Exception as error:
            logger.warning("could not look for a lease to end: %s", type(error).__name__)
            warning = (
                f"Could not read the lease book ({type(error).__name__}) to end an earlier lease of this "
                f"membership: if it had one (onboard leases; lease {key}), it still ends then."
            )
            return Finish(with_warning(outcome, warning))
        ended = change.format(ends_at=lease.ends_at)
        return Finish(outcome.model_copy(update={"changes": (*outcome.changes, ended)}))

    def _lease(self, key: str, ends_at: datetime, message: StageMessage, delivery: Delivery) -> Lease:
        request, group = message.request, message.group
        return Lease(
            key=key,
            external_email=str(request.external_email),
            display_name=request.required_display_name,
            group_id=group.id,
            group_mail=group.mail,
            group_display_name=group.display_name,
            group_kind=group.kind,
            source_system=request.source_system,
            ends_at=ends_at,
            notice_at=max(ends_at - self.notice_before, message.accepted_at),
            request_id=delivery.request_id,
            correlation_id=delivery.correlation_id,
            reply_to=delivery.reply_to,
            updated_at=self.clock(),
        )


def wake_message(lease: Lease, kind: WakeKind, *, catch_up: bool = False) -> ServiceBusMessage:
    """A wake-up: its MessageId names the lease, the end and the kind, so scheduling it again within the
    duplicate-detection window keeps one. A catch-up's (shared/lease_watch.py) has a MessageId of its own:
    the queue may still remember the lost original's, and would drop it."""
    wake = LeaseWake(key=lease.key, ends_at=lease.ends_at, kind=kind)
    return ServiceBusMessage(
        wake.model_dump_json().encode(),
        message_id=f"{lease.key}/{_compact(lease.ends_at)}/{kind}" + ("/catch-up" if catch_up else ""),
        correlation_id=lease.correlation_id,
        content_type=JSON,
        application_properties={REQUEST_ID: lease.request_id},
    )


def notice_message(lease: Lease, now: datetime) -> ServiceBusMessage:
    """The notice as a structured CloudEvent (docs/cloudevents.md, Lease notices)."""
    group = ResolvedGroup(
        id=lease.group_id, display_name=lease.group_display_name, mail=lease.group_mail, kind=lease.group_kind
    )
    notice = LeaseNotice(
        lease_id=lease.key,
        request_id=lease.request_id,
        source_system=lease.source_system,
        external_email=lease.external_email,
        display_name=lease.display_name,
        group=group,
        ends_at=lease.ends_at,
        description=(
            f"The membership in {lease.group_display_name!r} ends at {lease.ends_at:%Y-%m-%d %H:%M} UTC. To renew "
            "it, send an onboarding request for the same person and group with a later expires_at."
        ),
    )
    return published_event(
        event_type=NOTICE_TYPE,
        source=NOTICE_SOURCE,
        event_id=f"{lease.key}/{_compact(lease.ends_at)}/notice",
        about=lease.key,
        data=notice,
        now=now,
        subject=NOTICE_SUBJECT,
        correlation_id=lease.correlation_id,
        request_id=lease.request_id,
    )


def offboard_message(lease: Lease) -> ServiceBusMessage:
    """The offboard request a lease's end sends, as upstream would, into the pipeline."""
    request_id = expiry_request_id(lease.key, lease.ends_at)
    request = OnboardingRequest(
        action=RequestAction.OFFBOARD,
        external_email=lease.external_email,
        group=GroupRef(object_id=uuid.UUID(lease.group_id)),
        source_system=lease.source_system,
        request_id=request_id,
    )
    return ServiceBusMessage(
        request.model_dump_json(exclude_none=True).encode(),
        message_id=request_id,
        correlation_id=lease.correlation_id,
        reply_to=lease.reply_to,
        content_type=JSON,
    )

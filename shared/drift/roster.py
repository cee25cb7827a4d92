"""Keeping the roster (docs/drift.md): a finished onboarding puts its membership in, an offboard takes it out.

The stages call `RosterKeeper` beside the lease keeper (shared/leases.py), where the outcome is known.
What a write that fails does differs on purpose:

- an onboarding whose membership cannot be kept raises, so verify-delivery runs again (as a lease that
  cannot be kept does): an onboarding missing from the roster would never be watched, and nobody would
  know;
- an offboard whose membership cannot be ended finishes with a warning (as a lease's end does): the
  person is already out of the group, which is what the request is for; the roster then still lists the
  membership, and the next sweep reports it as drift (NotAMember), which points at the offboard.

`as_checked` is the one place a check's result becomes the membership's new state; both journal
adapters write what it returns, each with its own conditional write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.contracts import DriftFinding, OnboardingRequest, RequestAction, StageMessage
from shared.decisions import Finish
from shared.drift.model import Membership, MembershipState, Roster, membership_key
from shared.envelope import Delivery
from shared.outcomes import DONE, with_warning

logger = logging.getLogger("onboarding.drift")


def open_findings(membership: Membership) -> tuple[DriftFinding, ...]:
    """What is still wrong: the findings the watch did not repair itself."""
    return tuple(finding for finding in membership.findings if not finding.repaired)


def is_drifting(membership: Membership) -> bool:
    return bool(open_findings(membership))


def was_repaired(membership: Membership) -> bool:
    return any(finding.repaired for finding in membership.findings)


def may_record_check(membership: Membership, period: str) -> bool:
    """Active, and not checked in this period or a later one (period ids sort as text)."""
    checked = membership.checked_period
    return membership.state is MembershipState.ACTIVE and (checked is None or checked < period)


def as_checked(membership: Membership, period: str, findings: Sequence[DriftFinding], at: datetime) -> Membership:
    """The membership after one period's check: nothing found is seen right now; findings stay open,
    drifting since the first check that found any."""
    update: dict[str, object] = {"checked_period": period, "findings": tuple(findings), "updated_at": at}
    if findings:
        update["drifting_since"] = membership.drifting_since or at
    else:
        update |= {"last_seen_right_at": at, "drifting_since": None}
    return Membership.model_validate(membership.model_dump() | update)


def as_ended(membership: Membership, at: datetime) -> Membership:
    return membership.model_copy(update={"state": MembershipState.OFFBOARDED, "updated_at": at})


def as_renamed(membership: Membership, display_name: str, at: datetime) -> Membership:
    return Membership.model_validate(membership.model_dump() | {"display_name": display_name, "updated_at": at})


@dataclass(frozen=True)
class RosterKeeper:
    """What the stages keep when a request finishes: the membership an onboarding verified, or its end."""

    roster: Roster
    clock: Callable[[], datetime]

    async def finished(self, decision: Finish, message: StageMessage, delivery: Delivery) -> Finish:
        """A verified onboarding's membership, kept whole: the latest verification wins, findings cleared.
        A write that fails raises (verify-delivery runs again)."""
        if message.request.action is not RequestAction.ONBOARD or decision.outcome.status not in DONE:
            return decision
        request, now = message.request, self.clock()
        await self.roster.keep_membership(
            Membership(
                key=membership_key(str(request.external_email), message.group.id),
                external_email=str(request.external_email),
                display_name=request.required_display_name,
                group=message.group,
                recipient=message.recipient,
                allow_external_senders=request.allow_external_senders,
                source_system=request.source_system,
                request_id=delivery.request_id,
                correlation_id=delivery.correlation_id,
                reply_to=delivery.reply_to,
                verified_at=now,
                last_seen_right_at=now,
                updated_at=now,
            )
        )
        return decision

    async def offboarded(self, decision: Finish, request: OnboardingRequest) -> Finish:
        """An offboard that removed (or found no) membership ends it in the roster; a write that fails is a
        warning in the outcome, never a retry (see the module's note)."""
        group = decision.outcome.group
        if group is None or decision.outcome.status not in DONE:
            return decision
        key = membership_key(str(request.external_email), group.id)
        try:
            await self.roster.end_membership(key, self.clock())
        except Exception as error:
            return _warned(
                decision,
                f"Could not take the membership out of the drift watch's roster ({type(error).__name__}): the next "
                f"sweep may report it as drift (NotAMember, membership {key}); send the offboard again to end it.",
            )
        return decision

    async def updated(self, decision: Finish, request: OnboardingRequest) -> Finish:
        """An update that changed the person's names renames their membership of the request's group, so that
        its drift events name them as they are now (their other groups' entries keep the name until those
        are onboarded or updated again). A write that fails is a warning, as for an offboard."""
        group = decision.outcome.group
        if group is None or decision.outcome.status not in DONE:
            return decision
        key = membership_key(str(request.external_email), group.id)
        try:
            await self.roster.rename_membership(key, request.required_display_name, self.clock())
        except Exception as error:
            return _warned(
                decision,
                f"Could not rename the membership in the drift watch's roster ({type(error).__name__}): its drift "
                f"events name the person as before (membership {key}); send the update again to rename it.",
            )
        return decision


def _warned(decision: Finish, warning: str) -> Finish:
    logger.warning("could not change the roster: %s", warning.split(":", 1)[0])
    return Finish(with_warning(decision.outcome, warning))

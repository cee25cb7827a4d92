"""The drift event (docs/drift.md): a structured CloudEvent, published when a check finds a membership newly
wrong, to the onboarding's ReplyTo, else the outcome queue (as a lease's notice, shared/leases.py).

Its id is the membership and the period: a check delivered twice within the duplicate-detection window
publishes one event. A finding still open in a later period is not published again (`onboard drift` lists
it); findings that clear are closed without an event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from azure.servicebus import ServiceBusMessage

from shared.contracts import DriftEvent, DriftFinding
from shared.drift.model import Membership
from shared.envelope import published_event

DRIFT_TYPE = "org.m365-external-onboarding.drift.detected.v1"
DRIFT_SOURCE = "/m365-external-onboarding/drift"
DRIFT_SUBJECT = "onboarding.DriftDetected"


def drift_event_id(key: str, period: str) -> str:
    return f"{key}/{period}/drift"  # at most 97 + 22 characters: a MessageId may have 128


def drift_message(
    membership: Membership, findings: Sequence[DriftFinding], period: str, now: datetime
) -> ServiceBusMessage:
    """The event for what one period's check found wrong with one membership."""
    kinds = ", ".join(finding.kind.value for finding in findings)
    event_data = DriftEvent(
        membership_id=membership.key,
        request_id=membership.request_id,
        source_system=membership.source_system,
        external_email=membership.external_email,
        display_name=membership.display_name,
        group=membership.group,
        recipient=membership.recipient,
        findings=tuple(findings),
        last_seen_right_at=membership.last_seen_right_at,
        detected_at=now,
        description=(
            f"The membership in {membership.group.display_name!r} is no longer as the onboarding left it ({kinds}); "
            f"last seen right at {membership.last_seen_right_at:%Y-%m-%d %H:%M} UTC. Each finding says its fix."
        ),
    )
    return published_event(
        event_type=DRIFT_TYPE,
        source=DRIFT_SOURCE,
        event_id=drift_event_id(membership.key, period),
        about=membership.key,
        data=event_data,
        now=now,
        subject=DRIFT_SUBJECT,
        correlation_id=membership.correlation_id,
        request_id=membership.request_id,
    )

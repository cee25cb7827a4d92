"""The names the triggers bind to (the stage queues, the Service Bus connection setting) and the
pipeline's order: PIPELINE, read by function_app.py, the stage registry and the stages.

A leaf that imports only the standard library: the host imports function_app to index its functions at every cold
start, and these names are all that indexing needs (docs/performance.md, cold start).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum

# The trigger bindings name this connection; the Functions host resolves it from app settings
# `ServiceBusConnection` (connection string) or `ServiceBusConnection__fullyQualifiedNamespace`.
SERVICEBUS_CONNECTION = "ServiceBusConnection"
# The app's own queue for `onboard doctor`: a SelfCheckRequest there runs the app's self-check (shared/selfcheck.py).
SELF_CHECK_QUEUE = "doctor"
# Wake-ups of leases (docs/leases.md): scheduled messages that say "look at this lease now", read by one trigger.
LEASE_QUEUE = "leases"
# The drift watch's work (docs/drift.md): pages of the roster to fan out and runs of one group's people to check.
DRIFT_QUEUE = "drift"
# The queues' DuplicateDetectionHistoryTimeWindow (infra/main.bicep, the emulator's config.json):
# a MessageId seen within it is dropped, and the send still succeeds.
DUPLICATE_WINDOW = timedelta(minutes=10)


class StageName(StrEnum):
    CREATE_CONTACT = "create-contact"
    ADD_MEMBER = "add-member"
    VERIFY_DELIVERY = "verify-delivery"


# The one place the order lives: each stage passes a request on to the stage after it, and the
# last one publishes the outcome. function_app registers a trigger per stage in this order.
PIPELINE: tuple[StageName, ...] = (StageName.CREATE_CONTACT, StageName.ADD_MEMBER, StageName.VERIFY_DELIVERY)


def next_stage(stage: StageName) -> StageName:
    """The stage a request goes to after `stage` (the last stage has none: it finishes)."""
    position = PIPELINE.index(stage)
    if position == len(PIPELINE) - 1:
        raise ValueError(f"{stage} is the last stage: it finishes the request")
    return PIPELINE[position + 1]


# Queues of their own for upstream sources, comma-separated (docs/security.md): each gets a create-contact
# trigger, and a source the policy binds to one may send through it only. Read when the host indexes the
# functions, so a bad name stops the app from starting instead of leaving a queue unread.
INTAKE_QUEUES_SETTING = "ONBOARDING_INTAKE_QUEUES"
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$")


def intake_queues(settings: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The extra intake queues the settings name, in order, each once."""
    names: list[str] = []
    for name in (part.strip() for part in settings.get(INTAKE_QUEUES_SETTING, "").split(",")):
        if not name or name.lower() in {n.lower() for n in names}:
            continue
        if not _QUEUE_NAME.match(name) or name.lower() in {stage.value for stage in StageName} | {
            SELF_CHECK_QUEUE,
            LEASE_QUEUE,
            DRIFT_QUEUE,
        }:
            raise ValueError(
                f"{INTAKE_QUEUES_SETTING}: {name!r} is not a queue of its own (letters, digits, '.', '_', '-'; "
                "not a stage queue, the doctor's, the leases' nor the drift watch's)"
            )
        names.append(name)
    return tuple(names)


# When the drift watch's timer starts the period's sweep (NCRONTAB: second minute hour day month day-of-week,
# UTC). Read when the host indexes the app, like the intake queues; a malformed one stops the app there.
DRIFT_SCHEDULE_SETTING = "ONBOARDING_DRIFT_SCHEDULE"
DEFAULT_DRIFT_SCHEDULE = "0 15 0 * * *"  # daily, 00:15 UTC: a quarter of an hour into the default period
_NCRONTAB_FIELD = r"[0-9A-Za-z*/,-]+"
_NCRONTAB = re.compile(rf"^{_NCRONTAB_FIELD}( {_NCRONTAB_FIELD}){{5}}$")


def drift_schedule(settings: Mapping[str, str] = os.environ) -> str:
    """The drift sweep timer's NCRONTAB schedule: six fields (the host's form, with seconds)."""
    schedule = " ".join(settings.get(DRIFT_SCHEDULE_SETTING, "").split()) or DEFAULT_DRIFT_SCHEDULE
    if not _NCRONTAB.match(schedule):
        raise ValueError(
            f"{DRIFT_SCHEDULE_SETTING}: {schedule!r} is not an NCRONTAB schedule of six fields "
            "(second minute hour day month day-of-week), e.g. '0 15 0 * * *' for 00:15 UTC every day"
        )
    return schedule

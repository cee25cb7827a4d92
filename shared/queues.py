"""The names the triggers bind to (the stage queues, the Service Bus connection setting) and the
pipeline's order: PIPELINE, read by function_app.py, the stage registry and the stages.

A leaf that imports nothing: the host imports function_app to index its functions at every cold
start, and these names are all that indexing needs (docs/performance.md, cold start).
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

# The trigger bindings name this connection; the Functions host resolves it from app settings
# `ServiceBusConnection` (connection string) or `ServiceBusConnection__fullyQualifiedNamespace`.
SERVICEBUS_CONNECTION = "ServiceBusConnection"
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

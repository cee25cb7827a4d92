"""The names the triggers bind to: the stage queues and the Service Bus connection setting.

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

"""`onboard doctor`, the queues: every queue the app uses exists with the properties the code relies on.

Read with azure-servicebus's ServiceBusAdministrationClient (Service Bus's ATOM management API), which
needs Manage: Azure Service Bus Data Owner on the queue (or the namespace), or a shared access rule with
Manage. Without it the check says "skipped" and how to read the same properties otherwise. Sources:
docs/service-bus-facts.md ("Management: the ATOM entity API").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity.aio import DefaultAzureCredential
from azure.servicebus.aio.management import ServiceBusAdministrationClient
from azure.servicebus.management import QueueProperties
from pydantic import SecretStr

from shared.queues import DRIFT_QUEUE, DUPLICATE_WINDOW, LEASE_QUEUE, PIPELINE, SELF_CHECK_QUEUE
from shared.selfcheck import Check, Status

MANAGE_ROLE = "Azure Service Bus Data Owner"
MANAGE_NEEDED = (
    f"needs Manage: {MANAGE_ROLE} on the queues (or the namespace), or a shared access rule with Manage; "
    "without it, compare by hand: az servicebus queue show --namespace-name <namespace> --resource-group <group> "
    "--name <queue> (Reader on the namespace)"
)


@dataclass(frozen=True)
class QueueExpectation:
    """What the code relies on of one queue; None: not relied on."""

    name: str
    duplicate_detection: bool | None  # stable MessageIds make a resend a duplicate
    max_delivery_count: int | None  # the app's ONBOARDING_SERVICEBUS_MAX_DELIVERY_COUNT: its last delivery reports
    dead_letter_on_expiry: bool | None  # an expired request is dead-lettered, so its dead-letter function reports it


def expected_queues(
    outcome_queue: str, max_delivery_count: int, intake: tuple[str, ...] = ()
) -> list[QueueExpectation]:
    """The stage queues, each source's own intake queue (read by create-contact like its own), the outcome
    queue, the doctor's, the leases' wake-ups and the drift watch's work."""
    stages = [QueueExpectation(name, True, max_delivery_count, True) for name in (*PIPELINE, *intake)]
    return [
        *stages,
        QueueExpectation(outcome_queue, True, None, None),  # a second outcome of one run is dropped
        QueueExpectation(SELF_CHECK_QUEUE, None, None, None),
        # A wake-up rescheduled within the window (the same end kept again) is dropped: one pair per end.
        QueueExpectation(LEASE_QUEUE, True, None, None),
        # A page or check sent again within the window is dropped: the drift sweep checks no one twice.
        QueueExpectation(DRIFT_QUEUE, True, None, None),
    ]


def differences(queue: QueueProperties, expected: QueueExpectation) -> list[str]:
    found: list[str] = []
    if queue.requires_session:
        found.append("it requires sessions, which the triggers do not use")
    if expected.duplicate_detection and not queue.requires_duplicate_detection:
        found.append("duplicate detection is off (a resent message would run twice)")
    window = queue.duplicate_detection_history_time_window
    if expected.duplicate_detection and queue.requires_duplicate_detection and window != DUPLICATE_WINDOW:
        found.append(f"the duplicate-detection window is {window}, the code assumes {DUPLICATE_WINDOW}")
    if expected.max_delivery_count is not None and queue.max_delivery_count != expected.max_delivery_count:
        found.append(
            f"MaxDeliveryCount is {queue.max_delivery_count}, ONBOARDING_SERVICEBUS_MAX_DELIVERY_COUNT says "
            f"{expected.max_delivery_count}"
        )
    if expected.dead_letter_on_expiry and not queue.dead_lettering_on_message_expiration:
        found.append("expired messages are dropped, not dead-lettered (no outcome for them)")
    return found


class _PlainHttpTransport(AioHttpTransport):  # type: ignore[misc]  # azure-core exports it untyped
    """For the development emulator, which serves management over plain HTTP on its own port: the Python
    SDK's administration client always builds https:// URLs (Microsoft's .NET client switches by itself)."""

    async def send(self, request: Any, **config: Any) -> Any:
        request.url = request.url.replace("https://", "http://", 1)
        return await super().send(request, **config)


@asynccontextmanager
async def management_client(
    connection_string: SecretStr | None, namespace: str | None
) -> AsyncIterator[ServiceBusAdministrationClient]:
    """By connection string (the emulator's management port, or a rule with Manage), else as the operator."""
    if connection_string is not None:
        secret = connection_string.get_secret_value()
        emulator = "usedevelopmentemulator=true" in secret.replace(" ", "").lower()
        extra: dict[str, Any] = {"transport": _PlainHttpTransport()} if emulator else {}
        async with ServiceBusAdministrationClient.from_connection_string(secret, **extra) as client:
            yield client
        return
    assert namespace is not None
    async with (
        DefaultAzureCredential() as credential,
        ServiceBusAdministrationClient(namespace, credential) as client,
    ):
        yield client


async def check_queues(client: ServiceBusAdministrationClient, expectations: list[QueueExpectation]) -> list[Check]:
    checks: list[Check] = []
    for expected in expectations:
        name = f"queue {expected.name}"
        try:
            queue = await client.get_queue(expected.name)
        except ResourceNotFoundError:
            checks.append(
                Check(
                    area="queues",
                    name=name,
                    status=Status.WRONG,
                    detail="does not exist",
                    fix="provision it: azd provision (infra/main.bicep); locally, the emulator's config.json",
                )
            )
            continue
        except (ClientAuthenticationError, HttpResponseError) as error:
            status = getattr(error, "status_code", None)
            if isinstance(error, ClientAuthenticationError) or status in (401, 403):
                # One refusal answers for every queue: the same sign-in asks for each.
                return [
                    *checks,
                    Check(area="queues", name="queues", status=Status.SKIPPED, detail="refused", fix=MANAGE_NEEDED),
                ]
            checks.append(Check(area="queues", name=name, status=Status.WRONG, detail=f"answered {status}"))
            continue
        found = differences(queue, expected)
        checks.append(
            Check(
                area="queues",
                name=name,
                status=Status.WRONG if found else Status.OK,
                detail="; ".join(found) if found else "exists with the properties the code relies on",
                fix="set them as infra/main.bicep does (azd provision)" if found else None,
            )
        )
    return checks

"""The emulator's management endpoint, through azure-servicebus's own ServiceBusAdministrationClient (aio)
as `onboard doctor` builds it (cli/doctor_queues.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError
from pydantic import SecretStr

from cli.doctor_queues import management_client
from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator


async def test_a_queue_reads_back_as_configured(servicebus_emulator: ServiceBusEmulator) -> None:
    secret = SecretStr(servicebus_emulator.management_connection_string)
    async with management_client(secret, None) as client:
        queue = await client.get_queue("create-contact")
    configured = next(q for q in EmulatorConfig.default().queues if q.name == "create-contact")
    assert queue.name == "create-contact"
    assert queue.requires_duplicate_detection is configured.requires_duplicate_detection is True
    assert queue.duplicate_detection_history_time_window == timedelta(minutes=10)
    assert queue.max_delivery_count == configured.max_delivery_count
    assert queue.dead_lettering_on_message_expiration is True
    assert queue.lock_duration == configured.lock_duration
    assert queue.default_message_time_to_live == timedelta(days=14)
    assert queue.requires_session is False


async def test_a_queue_that_does_not_exist_is_not_found(servicebus_emulator: ServiceBusEmulator) -> None:
    """Service Bus answers 200 with its empty service feed; the SDK makes that ResourceNotFoundError."""
    async with management_client(SecretStr(servicebus_emulator.management_connection_string), None) as client:
        with pytest.raises(ResourceNotFoundError):
            await client.get_queue("no-such-queue")


async def test_a_rule_without_manage_is_refused(servicebus_emulator: ServiceBusEmulator) -> None:
    listen_only = servicebus_emulator.management_connection_string.replace(
        "SharedAccessKeyName=RootManageSharedAccessKey", "SharedAccessKeyName=ListenOnly"
    )
    async with management_client(SecretStr(listen_only), None) as client:
        with pytest.raises(ClientAuthenticationError, match="'Manage' claim"):
            await client.get_queue("create-contact")


def test_the_management_port_is_the_connection_strings_only_difference(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    amqp, management = servicebus_emulator.connection_string, servicebus_emulator.management_connection_string
    assert servicebus_emulator.management.port != servicebus_emulator.port
    assert management == amqp.replace(str(servicebus_emulator.port), str(servicebus_emulator.management.port))

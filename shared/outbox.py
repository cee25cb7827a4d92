"""Sending to Service Bus: one client per process, one cached sender per queue."""

from __future__ import annotations

import asyncio
from datetime import datetime

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender


class ServiceBusOutbox:
    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client
        self._senders: dict[str, ServiceBusSender] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_connection_string(cls, connection_string: str) -> ServiceBusOutbox:
        return cls(ServiceBusClient.from_connection_string(connection_string))

    @classmethod
    def from_namespace(cls, namespace: str, credential: AsyncTokenCredential) -> ServiceBusOutbox:
        return cls(ServiceBusClient(namespace, credential))

    async def _sender(self, queue: str) -> ServiceBusSender:
        async with self._lock:
            if queue not in self._senders:
                self._senders[queue] = self._client.get_queue_sender(queue)
            return self._senders[queue]

    async def send(self, queue: str, message: ServiceBusMessage) -> None:
        await (await self._sender(queue)).send_messages(message)

    async def schedule(self, queue: str, message: ServiceBusMessage, at: datetime) -> None:
        await (await self._sender(queue)).schedule_messages(message, at)

    async def close(self) -> None:
        for sender in self._senders.values():
            await sender.close()
        self._senders.clear()
        await self._client.close()

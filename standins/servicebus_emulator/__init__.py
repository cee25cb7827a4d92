"""A local Service Bus emulator speaking AMQP 1.0, for the real azure-servicebus SDK."""

from standins.servicebus_emulator.config import EmulatorConfig, QueueConfig
from standins.servicebus_emulator.server import ServiceBusEmulator

__all__ = ["EmulatorConfig", "QueueConfig", "ServiceBusEmulator"]

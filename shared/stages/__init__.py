"""The three stages: pure decisions over the directory ports, no Service Bus or Functions types."""

from shared.stages.add_member import add_member
from shared.stages.common import StageDependencies
from shared.stages.create_contact import create_contact
from shared.stages.verify_delivery import verify_delivery

__all__ = ["StageDependencies", "add_member", "create_contact", "verify_delivery"]

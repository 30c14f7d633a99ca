"""The one bus helper: NATS connection, commands (request/reply), events (JetStream).

The public surface of the bus: services import from `berth_shared.bus`, never from its modules.
"""

from berth_shared.bus.client import Bus, CommandHeaders
from berth_shared.bus.commands import CommandContext, CommandServer
from berth_shared.bus.consumer import EventConsumer, TransientError
from berth_shared.bus.envelope import SYSTEM_TENANT, CloudEvent, event_subject, new_event
from berth_shared.bus.lease import Lease

__all__ = [
    "SYSTEM_TENANT",
    "Bus",
    "CloudEvent",
    "CommandContext",
    "CommandHeaders",
    "CommandServer",
    "EventConsumer",
    "Lease",
    "TransientError",
    "event_subject",
    "new_event",
]

"""The one bus helper: NATS connection, commands (request/reply), events (JetStream)."""

from berth_shared.bus.client import Bus, CommandHeaders
from berth_shared.bus.envelope import CloudEvent, event_subject, new_event

__all__ = ["Bus", "CloudEvent", "CommandHeaders", "event_subject", "new_event"]

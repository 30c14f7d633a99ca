"""CloudEvents 1.0 structured-JSON envelope for every Berth event."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EVENTS_PREFIX = "berth.events"
SYSTEM_TENANT = "_system"
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")  # fullmatch: `$` would let "a\n" into a NATS subject


class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    specversion: str = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: str
    subject: str | None = None
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: str = "application/json"
    # CloudEvents extension attributes: lower-case alphanumerics only.
    berthtenant: str
    traceparent: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


def event_subject(tenant: str, noun: str, verb: str) -> str:
    for token in (tenant, noun, verb):
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"invalid subject token {token!r}")
    return f"{EVENTS_PREFIX}.{tenant}.{noun}.{verb}"


def event_type(noun: str, verb: str, version: int = 1) -> str:
    return f"io.berth.{noun}.{verb}.v{version}"


def new_event(
    *, service: str, tenant: str, noun: str, verb: str, subject_id: str, data: dict[str, Any]
) -> tuple[str, CloudEvent]:
    """Build an event and the NATS subject it goes to."""
    ev = CloudEvent(
        source=f"berth/{service}",
        type=event_type(noun, verb),
        subject=subject_id,
        berthtenant=tenant,
        data=data,
    )
    return event_subject(tenant, noun, verb), ev

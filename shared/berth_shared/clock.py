"""The one clock: timezone-aware UTC, for rows, leases and events alike."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)

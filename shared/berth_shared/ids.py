"""Resource ids: how they are made."""

from __future__ import annotations

import uuid


def new_id(prefix: str) -> str:
    """`<prefix>-<32 hex digits>`: unique without coordination, and says what it names."""
    return f"{prefix}-{uuid.uuid4().hex}"

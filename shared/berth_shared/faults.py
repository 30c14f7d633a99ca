"""Fault points for fault tests: a real `kill -9` of this process, or a slow step, at a
named place.

`BERTH_CRASH_AT=volume.create.after_record` (a comma-separated list is allowed) makes
`checkpoint("volume.create.after_record")` SIGKILL the process on the spot: no `finally`,
no flush, no graceful shutdown, exactly like a power cut of the service.

`BERTH_PAUSE_AT=fence.before_backend=6` (comma-separated `name=seconds`) makes
`await pause("fence.before_backend")` take that long, like a backend call stuck for a
while: a step slower than its lease, which must still finish on its owner.

Unset, every point is a lookup in a mapping read once at import.
"""

from __future__ import annotations

import asyncio
import os
import signal

ENV = "BERTH_CRASH_AT"
PAUSE_ENV = "BERTH_PAUSE_AT"
_CRASH_AT = frozenset(name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip())


def _pauses(raw: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in raw.split(","):
        name, sep, seconds = item.strip().partition("=")
        if name and sep:
            out[name] = float(seconds)
    return out


_PAUSE_AT = _pauses(os.environ.get(PAUSE_ENV, ""))


def checkpoint(name: str) -> None:
    """SIGKILL this process if `name` is one of the crash points asked for in BERTH_CRASH_AT."""
    if _CRASH_AT and name in _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


async def pause(name: str) -> None:
    """Sleep as long as BERTH_PAUSE_AT asks at `name` (not at all by default)."""
    seconds = _PAUSE_AT.get(name)
    if seconds:
        await asyncio.sleep(seconds)

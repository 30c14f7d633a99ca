"""Crash points for fault tests: a real `kill -9` of this process at a named place.

`BERTH_CRASH_AT=volume.create.after_record` (a comma-separated list is allowed) makes
`checkpoint("volume.create.after_record")` SIGKILL the process on the spot: no `finally`,
no flush, no graceful shutdown, exactly like a power cut of the service. Unset, every
checkpoint is a set lookup on a frozenset read once at import.
"""

from __future__ import annotations

import os
import signal

ENV = "BERTH_CRASH_AT"
_CRASH_AT = frozenset(name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip())


def checkpoint(name: str) -> None:
    """SIGKILL this process if `name` is one of the crash points asked for in BERTH_CRASH_AT."""
    if _CRASH_AT and name in _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)

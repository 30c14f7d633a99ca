"""The liveness loop: runs on the one replica holding the `attacher-monitor` lease."""

from __future__ import annotations

import asyncio
import logging

from berth_attacher.service import Attacher
from berth_shared.bus.lease import Lease

log = logging.getLogger(__name__)


async def run_monitor(attacher: Attacher, lease: Lease, interval_s: float) -> None:
    try:
        while True:
            try:
                if await lease.tick():
                    await attacher.resume_fences()
                    await attacher.monitor_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("liveness pass failed")
            await asyncio.sleep(interval_s)
    finally:
        await lease.release()

"""The liveness loop: runs on the one replica holding the `attacher-monitor` lease."""

from __future__ import annotations

import asyncio
import logging

from berth_attacher.service import Attacher
from berth_shared.bus import Lease
from berth_shared.clock import now

log = logging.getLogger(__name__)


async def run_monitor(attacher: Attacher, lease: Lease, interval_s: float) -> None:
    reconnects: int | None = None
    try:
        while True:
            try:
                # No heartbeat reaches this replica while its NATS connection is down (nor
                # while it is not running): from every (re)connection on, nodes' silence is
                # counted afresh, so an outage longer than the grace period fences no one.
                count = int(lease.bus.nc.stats.get("reconnects", 0))
                if not lease.bus.connected:
                    reconnects = None
                elif count != reconnects:
                    reconnects = count
                    attacher.fencing.heard_since = now()
                if lease.bus.connected and await lease.tick():
                    await attacher.fencing.monitor_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("liveness pass failed")
            await asyncio.sleep(interval_s)
    finally:
        await lease.release()

"""Backend capacity for placement, cached and bounded.

Placement weighs every registered cluster's real free space, asked just before the
transaction that reserves room opens (never inside it: a slow cluster must not hold the
transaction). Asking the backend for every create would still cost a remote call (Ceph:
a mon `df` command; an unreachable cluster: the 20 s connect timeout) per create, on every
cluster. So each cluster's answer is kept for a few seconds, only one probe per cluster
runs at a time, and a caller waits for a probe a bounded time: a cluster that does not
answer counts as "free space unknown" instead of stalling creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from berth_shared.backends import Capacity

log = logging.getLogger(__name__)


class CapacityCache:
    def __init__(self, ttl_s: float = 5.0, wait_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self._known: dict[str, tuple[float, Capacity | None]] = {}
        self._probes: dict[str, asyncio.Task[Capacity | None]] = {}

    async def get(self, key: str, probe: Callable[[], Awaitable[Capacity]]) -> Capacity | None:
        known = self._known.get(key)
        if known is not None and time.monotonic() - known[0] < self.ttl_s:
            return known[1]
        task = self._probes.get(key)
        if task is None or task.done():
            task = asyncio.create_task(self._probe(key, probe), name=f"capacity-{key}")
            self._probes[key] = task
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.wait_s)
        except TimeoutError:
            # Still running: the last answer if there was one, else unknown.
            return known[1] if known is not None else None

    async def _probe(self, key: str, probe: Callable[[], Awaitable[Capacity]]) -> Capacity | None:
        try:
            cap: Capacity | None = await probe()
        except Exception as exc:
            log.warning("capacity of cluster %s unknown: %s", key, exc)
            cap = None
        self._known[key] = (time.monotonic(), cap)
        return cap

    def forget(self, key: str) -> None:
        self._known.pop(key, None)

    async def close(self) -> None:
        for task in self._probes.values():
            task.cancel()
        for task in self._probes.values():
            with contextlib.suppress(BaseException):
                await task
        self._probes.clear()

"""The provisioner's and attacher's inventories over the bus, page by page, and each
storage cluster's own inventory through its backend.

A source either reads to its end or reports why not; the caller then decides nothing
from it. Backends are built once per cluster (and config) and kept: Ceph ones hold a
librados connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from berth_shared.backends import Backend, BackendCache
from berth_shared.bus import Bus
from berth_shared.messages.attacher import PREFIX as ATTACHER
from berth_shared.messages.attacher import AttachmentList
from berth_shared.messages.provisioner import PREFIX as PROVISIONER
from berth_shared.messages.provisioner import ClusterBackendList, SnapshotList, VolumeList
from berth_shared.messages.watcher import SourceReport
from berth_watcher.model import Attachment, BackendObject, Cluster, Snapshot, Volume

log = logging.getLogger(__name__)
T = TypeVar("T")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


async def timed(name: str, read: Callable[[], Awaitable[tuple[T, int, int]]]) -> tuple[T | None, SourceReport]:
    """Run a source: (result, report); result None when it failed part-way."""
    start = time.monotonic()
    try:
        result, items, pages = await read()
    except Exception as exc:
        log.warning("source %s failed: %s", name, exc)
        return None, SourceReport(name=name, ok=False, seconds=round(time.monotonic() - start, 3), error=_why(exc))
    return result, SourceReport(
        name=name, ok=True, items=items, pages=pages, seconds=round(time.monotonic() - start, 3)
    )


class BusInventory:
    """Paged reads of the other services' records, with the watcher's service token."""

    def __init__(self, bus: Bus, token: str, *, page_size: int, timeout_s: float) -> None:
        self.bus, self.token, self.page_size, self.timeout_s = bus, token, page_size, timeout_s

    async def _pages(self, subject: str, parse: Callable[[dict[str, Any]], T]) -> tuple[list[T], int, int]:
        items: list[T] = []
        token: str | None = None
        pages = 0
        while True:
            body: dict[str, Any] = {"limit": self.page_size} | ({"starting_token": token} if token else {})
            page = await self.bus.request(subject, body, token=self.token, timeout=self.timeout_s)
            pages += 1
            items.extend(parse(raw) for raw in page["items"])
            token = page.get("next_token")
            if not token:
                return items, len(items), pages

    async def volumes(self) -> tuple[list[Volume] | None, SourceReport]:
        def parse(raw: dict[str, Any]) -> Volume:
            v = VolumeList.model_validate({"items": [raw]}).items[0]
            return Volume(v.id, v.tenant, v.cluster_id, v.size_gib, v.volume_type, v.status, v.created_at)

        return await timed("provisioner/volumes", lambda: self._pages(f"{PROVISIONER}.inventory.volumes", parse))

    async def snapshots(self) -> tuple[list[Snapshot] | None, SourceReport]:
        def parse(raw: dict[str, Any]) -> Snapshot:
            s = SnapshotList.model_validate({"items": [raw]}).items[0]
            return Snapshot(s.id, s.tenant, s.cluster_id, s.volume_id, s.status, s.created_at)

        return await timed("provisioner/snapshots", lambda: self._pages(f"{PROVISIONER}.inventory.snapshots", parse))

    async def attachments(self) -> tuple[list[Attachment] | None, SourceReport]:
        def parse(raw: dict[str, Any]) -> Attachment:
            a = AttachmentList.model_validate({"items": [raw]}).items[0]
            return Attachment(a.id, a.volume_id, a.tenant, a.node_id, a.access_mode, a.readonly, a.state, a.created_at)

        return await timed("attacher/attachments", lambda: self._pages(f"{ATTACHER}.inventory.attachments", parse))

    async def clusters(self) -> tuple[list[Cluster] | None, SourceReport]:
        async def read() -> tuple[list[Cluster], int, int]:
            data = await self.bus.request(
                f"{PROVISIONER}.inventory.clusters", {}, token=self.token, timeout=self.timeout_s
            )
            found = [
                Cluster(c.id, c.name, c.backend, dict(c.config), c.capacity_gib, c.overcommit_ratio, c.state)
                for c in ClusterBackendList.model_validate(data).items
            ]
            return found, len(found), 1

        return await timed("provisioner/clusters", read)


class Backends:
    """One backend per storage cluster, built on first use and kept (the services' shared
    cache: a changed config builds a new one)."""

    def __init__(self) -> None:
        self._cache = BackendCache()

    def of(self, cluster: Cluster) -> Backend:
        return self._cache.get(cluster.id, cluster.backend, cluster.config)

    async def inventory(self, cluster: Cluster) -> tuple[list[BackendObject] | None, SourceReport]:
        async def read() -> tuple[list[BackendObject], int, int]:
            items = await self.of(cluster).inventory()
            objects = [
                BackendObject(
                    cluster.id, i.kind, i.id, i.size_bytes, i.used_bytes, i.created_at, i.tenant, i.users, i.partial
                )
                for i in items
            ]
            return objects, len(objects), 1

        return await timed(f"backend/{cluster.name}", read)

    async def close(self) -> None:
        await self._cache.close()


async def gather_limited(calls: list[Callable[[], Awaitable[T]]], limit: int = 4) -> list[T]:
    """Run the calls with at most `limit` at once (backends are slow, the machine small)."""
    slots = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))

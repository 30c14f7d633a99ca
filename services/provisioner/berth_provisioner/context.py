"""What every provisioner use case works with: the DB, the event writer, the operation
runner, one backend per cluster and the clusters' capacity as last probed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Row

from berth_provisioner import repo
from berth_provisioner.capacity import CapacityCache
from berth_shared.backends import Backend, BackendCache, Capacity
from berth_shared.db import Database, EventWriter
from berth_shared.errors import NotFound
from berth_shared.messages.provisioner import Volume
from berth_shared.operations import OperationRunner

T = TypeVar("T")

GIB = 1024**3


class Handoff(Generic[T]):
    """What one step has just committed, for the next step in this process, which then
    needs no read back: the create's recorded row for its backend step, the finished
    volume (from RETURNING) for the caller waiting to answer. Bounded: entries nobody takes
    (the caller gave up waiting; an attempt that failed) go oldest first, and a step that
    finds none reads the row as before."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._items: dict[str, T] = {}

    def put(self, key: str, item: T) -> None:
        self._items[key] = item
        while len(self._items) > self.limit:
            self._items.pop(next(iter(self._items)))

    def take(self, key: str) -> T | None:
        return self._items.pop(key, None)


@dataclass
class Context:
    db: Database
    events: EventWriter
    runner: OperationRunner
    # (volumes, gigabytes) for a tenant without a quota of its own.
    default_quota: tuple[int, int]
    backends: BackendCache = field(default_factory=BackendCache)
    capacity: CapacityCache = field(default_factory=CapacityCache)
    recorded: Handoff[Mapping[str, Any]] = field(default_factory=Handoff)
    finished: Handoff[Volume] = field(default_factory=Handoff)

    def backend_of(self, cluster: Row[Any]) -> Backend:
        """The backend for a cluster row (no DB access: safe inside a transaction)."""
        return self.backends.get(cluster.id, cluster.backend, cluster.config)

    async def backend_for(self, cluster_id: str) -> Backend:
        backend = self.backends.cached(cluster_id)
        if backend is None:
            async with self.db.sessions() as s:
                row = await repo.clusters.by_id(s, cluster_id)
            if row is None:
                raise NotFound(f"cluster {cluster_id} not found", reason="cluster_not_found")
            backend = self.backend_of(row)
        return backend

    async def capacity_of(self, cluster: Row[Any]) -> Capacity | None:
        """The cluster's real capacity, cached and bounded (see capacity.py); None: unknown."""
        return await self.capacity.get(cluster.id, lambda: self.backend_of(cluster).capacity())

    async def free_fractions(self, clusters: Iterable[Row[Any]]) -> dict[str, float | None]:
        """Each cluster's free share (0..1) as its backend reports it; None: unknown. Asked
        before a placing transaction opens, never inside it: a slow or unreachable cluster
        must not hold the transaction (and SQLite's one writer) while it is probed."""
        rows = list(clusters)
        caps = await asyncio.gather(*(self.capacity_of(row) for row in rows))
        return {
            row.id: cap.free_bytes / cap.total_bytes if cap is not None and cap.total_bytes else None
            for row, cap in zip(rows, caps, strict=True)
        }

    async def close(self) -> None:
        await self.capacity.close()
        await self.backends.close()

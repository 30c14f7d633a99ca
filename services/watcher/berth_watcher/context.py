"""What a job run works with: settings, records, sources, the leader's epoch, its result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.bus import Bus
from berth_shared.db import Database, EventWriter
from berth_shared.messages.watcher import SourceReport
from berth_watcher.config import WatcherSettings
from berth_watcher.leader import Leadership
from berth_watcher.metrics import WatcherMetrics
from berth_watcher.model import BackendObject, Cluster, KubeView
from berth_watcher.sources.inventory import Backends, BusInventory, gather_limited
from berth_watcher.sources.kube import KubeCluster
from berth_watcher.store import RunResult


@dataclass
class Sources:
    bus: Bus
    token: str
    inventory: BusInventory
    backends: Backends
    kube: list[KubeCluster]

    async def command(self, subject: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """A command to another service with the watcher's (admin) service token."""
        return await self.bus.request(subject, body, token=self.token, timeout=timeout)

    async def read_kube(self) -> tuple[KubeView | None, list[SourceReport]]:
        """Every configured Kubernetes cluster, merged; None when none is configured."""
        if not self.kube:
            return None, []
        parts = await asyncio.gather(*(asyncio.to_thread(k.read) for k in self.kube))
        view = KubeView(complete=True)
        reports: list[SourceReport] = []
        for part, reps in parts:
            view.merge(part)
            reports += reps
        return view, reports

    async def read_backends(
        self, clusters: list[Cluster]
    ) -> tuple[dict[str, list[BackendObject] | None], list[SourceReport]]:
        read = await gather_limited([lambda c=c: self.backends.inventory(c) for c in clusters])  # type: ignore[misc]
        return {c.id: objects for c, (objects, _) in zip(clusters, read, strict=True)}, [r for _, r in read]


@dataclass
class Context:
    settings: WatcherSettings
    db: Database
    events: EventWriter
    leader: Leadership
    epoch: int
    run_id: str
    result: RunResult
    sources: Sources
    metrics: WatcherMetrics

    async def check(self, s: AsyncSession) -> None:
        """In an action's transaction: this run's leader still leads (else LeadershipLost)."""
        await self.leader.check(s, self.epoch)

    def note(self, reports: list[SourceReport] | SourceReport) -> None:
        self.result.sources += reports if isinstance(reports, list) else [reports]


@dataclass
class Core:
    """What every part of the service shares (the scheduler, the use cases)."""

    settings: WatcherSettings
    db: Database
    events: EventWriter
    bus: Bus
    leader: Leadership
    sources: Sources
    metrics: WatcherMetrics

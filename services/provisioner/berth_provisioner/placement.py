"""Placement: which storage cluster takes a new volume (pure; no I/O).

Storage grows by adding clusters, never by rebalancing: filter the clusters that can take
the volume, then prefer the one with the most room, so a freshly added, empty cluster
takes new volumes at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterView:
    id: str
    name: str
    volume_types: tuple[str, ...]
    zone: str
    state: str
    capacity_gib: int
    overcommit_ratio: float
    provisioned_gib: int
    free_floor_pct: float
    allowed_tenants: tuple[str, ...] | None
    # Real free share reported by the backend (0..1); None when unknown.
    backend_free_fraction: float | None = None
    recent_creates: int = 0

    @property
    def limit_gib(self) -> float:
        return self.capacity_gib * self.overcommit_ratio


@dataclass(frozen=True)
class PlacementRequest:
    tenant: str
    size_gib: int
    volume_type: str
    zone: str | None


@dataclass(frozen=True)
class Rejection:
    cluster: str
    reason: str


class NoValidCluster(Exception):
    def __init__(self, rejections: list[Rejection]) -> None:
        self.rejections = rejections
        reasons = "; ".join(f"{r.cluster}: {r.reason}" for r in rejections) or "no clusters registered"
        super().__init__(f"no storage cluster can take this volume ({reasons})")


def reject_reason(c: ClusterView, req: PlacementRequest) -> str | None:
    """Why `c` cannot take the volume, or None if it can."""
    if c.state != "active":
        return f"cluster is {c.state}"
    if req.volume_type not in c.volume_types:
        return f"does not serve volume type {req.volume_type}"
    if req.zone is not None and c.zone != req.zone:
        return f"in zone {c.zone}, not {req.zone}"
    if c.allowed_tenants is not None and req.tenant not in c.allowed_tenants:
        return "tenant not allowed"
    if c.provisioned_gib + req.size_gib > c.limit_gib:
        return f"over its overcommit limit ({c.provisioned_gib}+{req.size_gib} > {c.limit_gib:g} GiB)"
    if c.backend_free_fraction is not None and c.backend_free_fraction * 100 < c.free_floor_pct:
        return f"backend free space under the {c.free_floor_pct:g}% floor"
    return None


def weight(c: ClusterView) -> float:
    """Higher is better: room left under the overcommit limit, real free space, little recent load."""
    headroom = 1.0 - c.provisioned_gib / c.limit_gib
    free = c.backend_free_fraction if c.backend_free_fraction is not None else 1.0
    load_penalty = min(c.recent_creates, 100) / 1000
    return headroom * 0.7 + free * 0.3 - load_penalty


def rank(clusters: list[ClusterView], req: PlacementRequest) -> list[ClusterView]:
    """Clusters that can take the volume, best first; raise NoValidCluster if none can."""
    fits: list[ClusterView] = []
    rejections: list[Rejection] = []
    for c in clusters:
        why = reject_reason(c, req)
        if why is None:
            fits.append(c)
        else:
            rejections.append(Rejection(c.name, why))
    if not fits:
        raise NoValidCluster(rejections)
    return sorted(fits, key=lambda c: (-weight(c), c.name))

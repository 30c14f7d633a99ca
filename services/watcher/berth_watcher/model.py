"""What the watcher's sources report, reduced to what the jobs use (no I/O here).

Records are small slotted dataclasses: a run holds every volume, PV and backend object of
the installation at once (the benchmark: 100,000 of each), so they stay compact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from berth_shared.messages.watcher import FindingKind, ResourceKind, Severity


@dataclass(frozen=True, slots=True)
class Cluster:
    id: str
    name: str
    backend: str
    config: dict[str, Any]
    capacity_gib: int
    overcommit_ratio: float
    state: str


@dataclass(frozen=True, slots=True)
class Volume:
    id: str
    tenant: str
    cluster_id: str
    size_gib: int
    volume_type: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: str
    tenant: str
    cluster_id: str
    volume_id: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    volume_id: str
    tenant: str
    node_id: str
    access_mode: str
    readonly: bool
    state: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BackendObject:
    cluster_id: str
    kind: str  # volume | snapshot
    id: str
    size_bytes: int
    used_bytes: int
    created_at: datetime | None = None
    tenant: str | None = None
    users: tuple[str, ...] = ()
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Pv:
    kube: str  # which Kubernetes cluster (the kubeconfig's name)
    name: str
    uid: str
    driver: str
    volume_handle: str
    phase: str
    reclaim_policy: str
    claim: str | None  # "<namespace>/<name>"
    access_modes: tuple[str, ...]
    created_at: datetime | None
    phase_since: datetime | None  # status.lastPhaseTransitionTime


@dataclass(frozen=True, slots=True)
class Pod:
    kube: str
    namespace: str
    name: str
    node: str | None
    phase: str
    claims: tuple[str, ...]  # "<namespace>/<claim name>"


@dataclass(frozen=True, slots=True)
class VolumeAttachment:
    kube: str
    name: str
    attacher: str
    pv_name: str | None
    node: str
    attached: bool


@dataclass
class KubeView:
    """Everything read from the configured Kubernetes clusters; `complete` only when every
    list of every cluster was read to its end."""

    complete: bool
    pvs: list[Pv] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    attachments: list[VolumeAttachment] = field(default_factory=list)
    nodes: set[tuple[str, str]] = field(default_factory=set)  # (kube, node name)
    # (kube, "<namespace>/<claim>") -> the PV it is bound to
    claims: dict[tuple[str, str], str] = field(default_factory=dict)

    def merge(self, other: KubeView) -> None:
        self.complete = self.complete and other.complete
        self.pvs += other.pvs
        self.pods += other.pods
        self.attachments += other.attachments
        self.nodes |= other.nodes
        self.claims.update(other.claims)


@dataclass
class Inventory:
    """One run's view. A None part was not read completely: nothing that depends on it is
    decided (no finding made or resolved from it, no action)."""

    volumes: list[Volume] | None
    snapshots: list[Snapshot] | None
    attachments: list[Attachment] | None
    # Per cluster id; None for a cluster whose backend could not be scanned to its end.
    backend: dict[str, list[BackendObject] | None]
    # None: no Kubernetes configured.
    kube: KubeView | None


@dataclass(frozen=True, slots=True)
class Observation:
    """Something a complete source shows that may become (or keeps) a finding."""

    kind: FindingKind
    key: str
    scope: str
    severity: Severity
    resource_kind: ResourceKind
    resource_id: str
    tenant: str | None = None
    cluster_id: str | None = None
    # The object's own age where known: a grace period may count from it.
    since: datetime | None = None
    # Whether the policy's action may apply (never for what a PV references).
    actionable: bool = False
    details: dict[str, Any] = field(default_factory=dict)

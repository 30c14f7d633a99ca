"""Provisioner commands (`berth.provisioner.<noun>.<verb>`), replies and event payloads."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from berth_shared.messages.common import (
    ById,
    InventoryPage,
    ListQuery,
    Message,
    Reply,
    ResourceId,
    ResourceName,
    TenantName,
)

PREFIX = "berth.provisioner"

VolumeStatus = Literal["creating", "available", "expanding", "deleting", "error"]
SnapshotStatus = Literal["creating", "available", "deleting", "error"]
ClusterState = Literal["active", "draining", "readonly"]
BackendKind = Literal["file", "rbd", "cephfs", "cinder", "manila"]

MAX_VOLUME_GIB = 64 * 1024
# Volumes in one group snapshot: one consistent cut holds every member's writes meanwhile.
MAX_GROUP_MEMBERS = 64

# Counts and sizes are strict JSON integers: in lax mode pydantic reads `true` as 1 and
# "2" as 2, so a client's type mix-up would silently create a volume of the wrong size.
SizeGiB = Annotated[int, Field(strict=True, ge=1, le=MAX_VOLUME_GIB, description="Size in GiB")]


class VolumeCreate(Message):
    name: ResourceName
    size_gib: SizeGiB
    volume_type: ResourceName
    zone: ResourceName | None = None
    source_snapshot_id: ResourceId | None = None
    source_volume_id: ResourceId | None = None

    @model_validator(mode="after")
    def _one_source(self) -> VolumeCreate:
        if self.source_snapshot_id and self.source_volume_id:
            raise ValueError("give at most one of source_snapshot_id and source_volume_id")
        return self


class Volume(Reply):
    id: str
    name: str
    tenant: str
    size_gib: int
    volume_type: str
    zone: str
    cluster_id: str
    status: VolumeStatus
    source_snapshot_id: str | None = None
    source_volume_id: str | None = None
    created_at: datetime
    updated_at: datetime


class VolumeList(Reply):
    items: list[Volume]
    next_token: str | None = None


class VolumeLocation(Reply):
    """Where a volume lives, for the attacher and the node side (admin/service only)."""

    volume: Volume
    backend: str
    config: dict[str, Any]


class VolumeExpand(Message):
    id: ResourceId
    size_gib: SizeGiB


class VolumeExpandBody(Message):
    size_gib: SizeGiB


class SnapshotCreate(Message):
    name: ResourceName
    volume_id: ResourceId


class Snapshot(Reply):
    id: str
    name: str
    tenant: str
    volume_id: str
    size_gib: int
    cluster_id: str
    status: SnapshotStatus
    # A group snapshot's member: deleted only with its group.
    group_snapshot_id: str | None = None
    created_at: datetime
    updated_at: datetime


class SnapshotList(Reply):
    items: list[Snapshot]
    next_token: str | None = None


class SnapshotListQuery(ListQuery):
    volume_id: ResourceId | None = None


class GroupSnapshotCreate(Message):
    name: ResourceName
    # The volumes to snapshot at one point in time: one tenant's, on one storage cluster.
    volume_ids: list[ResourceId] = Field(min_length=1, max_length=MAX_GROUP_MEMBERS)

    @model_validator(mode="after")
    def _distinct(self) -> GroupSnapshotCreate:
        if len(set(self.volume_ids)) != len(self.volume_ids):
            raise ValueError("volume_ids must not repeat a volume")
        return self


class GroupSnapshot(Reply):
    id: str
    name: str
    tenant: str
    volume_ids: list[str]
    cluster_id: str
    status: SnapshotStatus
    # One member snapshot per volume, in volume_ids' order, all taken at the same point in time.
    snapshots: list[Snapshot]
    created_at: datetime
    updated_at: datetime


class GroupSnapshotList(Reply):
    items: list[GroupSnapshot]
    next_token: str | None = None


class ClusterRegister(Message):
    name: ResourceName
    backend: BackendKind = "file"
    config: dict[str, Any] = Field(default_factory=dict)
    volume_types: list[ResourceName] = Field(min_length=1)
    zone: ResourceName = "default"
    capacity_gib: int = Field(strict=True, ge=1)
    overcommit_ratio: float = Field(default=1.0, ge=1.0, le=100.0)
    # New volumes are refused once the backend's real free space falls under this share.
    free_floor_pct: float = Field(default=5.0, ge=0.0, lt=100.0)
    state: ClusterState = "active"
    allowed_tenants: list[TenantName] | None = None


class ClusterPatch(Message):
    state: ClusterState | None = None
    capacity_gib: int | None = Field(default=None, strict=True, ge=1)
    overcommit_ratio: float | None = Field(default=None, ge=1.0, le=100.0)
    volume_types: list[ResourceName] | None = Field(default=None, min_length=1)
    allowed_tenants: list[TenantName] | None = None

    @model_validator(mode="after")
    def _null_only_for_allowed_tenants(self) -> ClusterPatch:
        # A left-out field keeps its value; an explicit null would reach a NOT NULL column
        # (a 500). Null means something only for allowed_tenants: every tenant.
        nulls = sorted(f for f in self.model_fields_set if f != "allowed_tenants" and getattr(self, f) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null; leave a field out to keep its value")
        return self


class ClusterUpdate(ClusterPatch):
    id: ResourceId


class Cluster(Reply):
    id: str
    name: str
    backend: str
    volume_types: list[str]
    zone: str
    capacity_gib: int
    overcommit_ratio: float
    free_floor_pct: float
    state: ClusterState
    allowed_tenants: list[str] | None
    provisioned_gib: int
    volume_count: int
    backend_total_bytes: int | None = None
    backend_free_bytes: int | None = None
    created_at: datetime


class ClusterList(Reply):
    items: list[Cluster]


class VolumeTypeCreate(Message):
    name: ResourceName
    description: str = Field(default="", max_length=500)


class ClusterBackend(Cluster):
    """A cluster with its backend config: what a service needs to reach its storage."""

    config: dict[str, Any]


class ClusterBackendList(Reply):
    items: list[ClusterBackend]


class VolumeRetypeBody(Message):
    volume_type: ResourceName


class VolumeRetype(VolumeRetypeBody):
    id: ResourceId


class VolumeRetyped(Volume):
    """A volume moved to another type in place; `volume_type` is the new one."""

    previous_type: str


class VolumeType(Reply):
    name: str
    description: str


class VolumeTypeList(Reply):
    items: list[VolumeType]


class QuotaLimits(Message):
    volumes: int = Field(strict=True, ge=0)
    gigabytes: int = Field(strict=True, ge=0)


class QuotaSet(QuotaLimits):
    tenant: TenantName


class QuotaGet(Message):
    tenant: TenantName | None = None


class Quota(Reply):
    tenant: str
    volumes: int
    gigabytes: int
    used_volumes: int
    used_gigabytes: int


class Empty(Reply):
    pass


class NoArgs(Message):
    pass


# Commands: subject -> (request model, reply model). The AsyncAPI document is built from this.
COMMANDS: dict[str, tuple[type[Message], type[Reply]]] = {
    f"{PREFIX}.volume.create": (VolumeCreate, Volume),
    f"{PREFIX}.volume.get": (ById, Volume),
    f"{PREFIX}.volume.list": (ListQuery, VolumeList),
    f"{PREFIX}.volume.expand": (VolumeExpand, Volume),
    f"{PREFIX}.volume.retype": (VolumeRetype, Volume),
    f"{PREFIX}.volume.delete": (ById, Empty),
    f"{PREFIX}.volume.locate": (ById, VolumeLocation),
    f"{PREFIX}.snapshot.create": (SnapshotCreate, Snapshot),
    f"{PREFIX}.snapshot.get": (ById, Snapshot),
    f"{PREFIX}.snapshot.list": (SnapshotListQuery, SnapshotList),
    f"{PREFIX}.snapshot.delete": (ById, Empty),
    f"{PREFIX}.group_snapshot.create": (GroupSnapshotCreate, GroupSnapshot),
    f"{PREFIX}.group_snapshot.get": (ById, GroupSnapshot),
    f"{PREFIX}.group_snapshot.list": (ListQuery, GroupSnapshotList),
    f"{PREFIX}.group_snapshot.delete": (ById, Empty),
    f"{PREFIX}.cluster.register": (ClusterRegister, Cluster),
    f"{PREFIX}.cluster.update": (ClusterUpdate, Cluster),
    f"{PREFIX}.cluster.list": (NoArgs, ClusterList),
    f"{PREFIX}.type.create": (VolumeTypeCreate, VolumeType),
    f"{PREFIX}.type.list": (NoArgs, VolumeTypeList),
    f"{PREFIX}.quota.set": (QuotaSet, Quota),
    f"{PREFIX}.quota.get": (QuotaGet, Quota),
    f"{PREFIX}.inventory.volumes": (InventoryPage, VolumeList),
    f"{PREFIX}.inventory.snapshots": (InventoryPage, SnapshotList),
    f"{PREFIX}.inventory.clusters": (NoArgs, ClusterBackendList),
}

# Events: (noun, verb) -> payload model carried in the CloudEvent's `data`.
EVENTS: dict[tuple[str, str], type[Reply]] = {
    ("volume", "created"): Volume,
    ("volume", "create_failed"): Volume,
    ("volume", "expanded"): Volume,
    ("volume", "retyped"): VolumeRetyped,
    ("volume", "deleted"): Volume,
    ("snapshot", "created"): Snapshot,
    ("snapshot", "deleted"): Snapshot,
    ("group_snapshot", "created"): GroupSnapshot,
    ("group_snapshot", "deleted"): GroupSnapshot,
    ("cluster", "registered"): Cluster,
    ("cluster", "updated"): Cluster,
    ("quota", "updated"): Quota,
}

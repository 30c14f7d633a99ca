"""The backend interface. Every call is idempotent: repeating it after a crash is safe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from berth_shared.errors import BerthError, InvalidArgument


class BackendError(BerthError):
    code = "unavailable"
    status = 503
    title = "Storage backend error"


class Unsupported(BerthError):
    code = "failed_precondition"
    status = 409
    title = "Not supported by this backend"


@dataclass(frozen=True)
class Capacity:
    total_bytes: int
    free_bytes: int


ObjectKind = Literal["volume", "snapshot"]


@dataclass(frozen=True)
class InventoryItem:
    kind: ObjectKind
    id: str
    size_bytes: int
    used_bytes: int
    # When the backend made it, where it knows: the watcher's grace periods count from it.
    created_at: datetime | None = None
    # The owner as the backend records it (CephFS: the tenant's subvolume group); None: unknown.
    tenant: str | None = None
    # Who uses it right now: RBD watcher addresses, CephFS session addresses, loop devices.
    users: tuple[str, ...] = ()
    # A create that never finished (RBD `<id>.berth-partial`, file `<id>.img.partial`).
    partial: bool = False


@dataclass(frozen=True)
class TrashItem:
    """An object in the backend's quarantine (RBD trash, file backend `trash/`, CephFS
    quarantine index): out of use, its data intact until purged."""

    kind: ObjectKind
    id: str
    size_bytes: int
    trashed_at: datetime | None = None


@dataclass(frozen=True)
class QosLimits:
    """Per-volume IO limits, None = unlimited. `iops`/`bps` cap reads and writes together;
    the `read_`/`write_` ones cap one direction. Backends apply what they can express."""

    iops: int | None = None
    bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None
    read_bps: int | None = None
    write_bps: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise InvalidArgument(f"QoS limit {f.name} must be a positive integer or unset", reason="invalid_qos")

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> QosLimits:
        return cls(**{k: int(v) for k, v in data.items() if v is not None})

    @property
    def unlimited(self) -> bool:
        return not self.as_dict()


@dataclass(frozen=True)
class QosState:
    """What the storage holds for a volume now, and whether it is enforced on the data path."""

    limits: QosLimits
    enforced: bool
    # How it is enforced (`rbd image config`, `cgroup v1 blkio throttle loop3`), or why not.
    detail: str


@dataclass(frozen=True)
class IoCounters:
    """Cumulative IO of a volume since its device appeared (a drop means a reset)."""

    read_ops: int
    write_ops: int
    read_bytes: int
    write_bytes: int
    # What was counted (file backend: the loop devices); when it changes the count restarts.
    source: str = ""


@dataclass(frozen=True)
class FenceTarget:
    """What to cut off: a node, the volumes it had on this cluster, and the storage client
    addresses it was seen with (Ceph blocklists addresses, not node names)."""

    node_id: str
    volume_ids: tuple[str, ...]
    client_addresses: tuple[str, ...] = ()


class Backend(Protocol):
    kind: str

    # `tenant`: the owner of the new volume, for backends that group volumes per tenant
    # (CephFS: one subvolume group each); the others ignore it.
    async def create_volume(self, volume_id: str, size_bytes: int, *, tenant: str | None = None) -> None: ...
    async def delete_volume(self, volume_id: str) -> None: ...
    async def expand_volume(self, volume_id: str, size_bytes: int) -> None: ...
    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None: ...
    async def delete_snapshot(self, snapshot_id: str) -> None: ...
    async def create_volume_from_snapshot(
        self, volume_id: str, snapshot_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None: ...
    async def clone_volume(
        self, volume_id: str, source_volume_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None: ...
    async def capacity(self) -> Capacity: ...
    async def inventory(self) -> list[InventoryItem]:
        """Every Berth object the backend holds (not the quarantined ones: see `trash`)."""
        ...

    # -- quarantine: the watcher never deletes at once --------------------------------
    # quarantine: live object -> trash (no-op if already there; NotFound if in neither;
    # FailedPrecondition while something uses it). restore: trash -> live (no-op if live;
    # FailedPrecondition if both exist). purge: remove from the trash (no-op if not there).

    async def trash(self) -> list[TrashItem]: ...
    async def quarantine(self, kind: ObjectKind, object_id: str) -> None: ...
    async def restore(self, kind: ObjectKind, object_id: str) -> None: ...
    async def purge(self, kind: ObjectKind, object_id: str) -> None: ...

    # -- QoS ---------------------------------------------------------------------------
    async def set_qos(self, volume_id: str, limits: QosLimits) -> QosState:
        """Apply `limits` (replacing what was there; empty = unlimited); return the result."""
        ...

    async def get_qos(self, volume_id: str) -> QosState:
        """What the storage holds now (the watcher compares it with what it wants: drift)."""
        ...

    async def io_counters(self) -> dict[str, IoCounters]:
        """Cumulative IO per volume, for the volumes whose IO this backend can see now."""
        ...

    def node_context(self, volume_id: str) -> dict[str, str]:
        """What a node needs to attach the volume (CSI publish_context)."""
        ...

    async def fence(self, target: FenceTarget) -> list[str]:
        """Cut the node off at the storage; return what was cut, for the fence record."""
        ...

    async def unfence(self, target: FenceTarget) -> list[str]: ...

    async def close(self) -> None:
        """Drop connections and threads the backend holds (Ceph: its librados client); the
        backend is not used afterwards."""
        ...


@runtime_checkable
class GroupSnapshots(Protocol):
    """Optional: backends that snapshot several volumes at one point in time (a database
    spread over volumes). `members` maps each member snapshot's id to its volume's; once
    made, each member is a snapshot like any other to restore from (and is deleted only
    with its group). Both calls are idempotent, and a repeated create after a crash makes
    one consistent cut, never members from two."""

    async def create_group_snapshot(self, group_snapshot_id: str, members: Mapping[str, str]) -> None: ...
    async def delete_group_snapshot(self, group_snapshot_id: str, members: Mapping[str, str]) -> None: ...


def group_snapshots(backend: Backend) -> GroupSnapshots:
    """The backend's group snapshots, or Unsupported for a backend without them."""
    if not isinstance(backend, GroupSnapshots):
        raise Unsupported(
            f"the {backend.kind} backend cannot snapshot several volumes at one point in time",
            reason="group_snapshot_unsupported",
        )
    return backend

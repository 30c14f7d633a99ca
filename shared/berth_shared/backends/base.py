"""The backend interface. Every call is idempotent: repeating it after a crash is safe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from berth_shared.errors import BerthError


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


@dataclass(frozen=True)
class InventoryItem:
    kind: Literal["volume", "snapshot"]
    id: str
    size_bytes: int
    used_bytes: int


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
    async def inventory(self) -> list[InventoryItem]: ...
    async def set_qos(self, volume_id: str, iops: int | None, bytes_per_s: int | None) -> None: ...
    def node_context(self, volume_id: str) -> dict[str, str]:
        """What a node needs to attach the volume (CSI publish_context)."""
        ...

    async def fence(self, target: FenceTarget) -> list[str]:
        """Cut the node off at the storage; return what was cut, for the fence record."""
        ...

    async def unfence(self, target: FenceTarget) -> list[str]: ...

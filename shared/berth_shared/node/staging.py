"""Node-side staging, in one place: what a node does with a publish context to make a
volume usable here (attach it, format it once, mount it), to grow it, and to give it back.

The CSI node service and the attacher's node agent both stage through this module only.
Each backend has one `Stager`, chosen by the publish context's `backend`:

| backend | stager | what staging is |
|---|---|---|
| `file` | `file.FileStager` | the volume file on a loop device, its file system mounted |
| `rbd` | `ceph_stage.RbdStager` | the image as a block device (krbd, rbd-nbd, rbd-fuse + loop), mounted |
| `cephfs` | `ceph_stage.CephFsStager` | the subvolume mounted (kernel client or ceph-fuse) |
| `cinder` | `ceph_stage.CinderStager` | Cinder's RBD connection info: as `rbd` |
| `manila` | `ceph_stage.CephFsStager` | a Manila CephFS share's export: as `cephfs` |

A new kind of volume (say, Cinder's iSCSI connection info) is one more Stager in
`STAGERS`; the CSI service needs no change. The host work (`host`, `mounts`, `ceph`) is
synchronous and bounded; stagers run it off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field

from berth_shared.errors import InvalidArgument
from berth_shared.node import mounts
from berth_shared.node.ceph import CephClientSpec, CephFsMount, RbdAttachment
from berth_shared.node.run import HostCommandError


@dataclass(frozen=True)
class StageRequest:
    volume_id: str
    context: Mapping[str, str]  # the publish context (`backend` says which stager)
    node_id: str
    target: str | None  # where to mount the volume; None: raw block, the device is the volume
    workdir: Path  # node-private scratch: fuse mount points, the fuse daemons' logs
    fstype: str | None = None  # None: what the device carries, else ext4
    readonly: bool = False
    mount_options: tuple[str, ...] = ()
    # Ceph: this node's own cephx identity (None: the Ceph conventions, see ceph_stage).
    identity: CephClientSpec | None = None
    # Called (from a worker thread) as soon as a device exists, before it is formatted or
    # mounted: the caller records it, so a crash in between leaves nothing it cannot find.
    on_device: Callable[[str], None] | None = None


class CephHandle(BaseModel):
    """What unstaging a Ceph volume needs beyond `Staged`: the identity it was attached with
    and the client's details (method, fuse dir and daemon pid, admin socket)."""

    identity: CephClientSpec
    rbd: RbdAttachment | None = None
    fs: CephFsMount | None = None


class Staged(BaseModel):
    """One volume staged on this node: what heartbeats report and what unstaging needs. Kept
    by the caller (the CSI service writes it to its state files)."""

    volume_id: str
    backend: str
    source: str  # the volume file; Ceph: pool/image, or the subvolume path
    mount: str | None = None  # where its file system is mounted; None: raw block
    device: str | None = None  # its block device (file, RBD)
    fs_type: str | None = None
    readonly: bool = False
    mount_options: list[str] = Field(default_factory=list)
    client_address: str | None = None  # Ceph: the client a fence cuts off
    ceph: CephHandle | None = None


class Stager(Protocol):
    def source(self, context: Mapping[str, str]) -> str:
        """The volume the context names (checks the context: InvalidArgument)."""
        ...

    async def stage(self, req: StageRequest) -> Staged: ...

    async def unstage(self, staged: Staged, *, fenced: bool, node_id: str) -> None:
        """Idempotent. `fenced`: the storage has cut this node off; do not wait for clients
        that cannot close cleanly, and detach busy mounts lazily (they cannot write)."""
        ...

    async def expand(self, staged: Staged, *, in_use: bool) -> None:
        """Make the device and the file system see the volume's new size."""
        ...

    def is_staged(self, staged: Staged) -> bool:
        """Still in place (mounted, device bound)? False after a reboot or a dead client."""
        ...


def _stagers() -> dict[str, Stager]:
    from berth_shared.node.ceph_stage import CephFsStager, CinderStager, RbdStager
    from berth_shared.node.file import FileStager

    return {
        "file": FileStager(),
        "rbd": RbdStager(),
        "cephfs": CephFsStager(),
        "cinder": CinderStager(),
        "manila": CephFsStager(),
    }


STAGERS: dict[str, Stager] = {}


def stager(backend: str) -> Stager:
    if not STAGERS:
        STAGERS.update(_stagers())
    found = STAGERS.get(backend)
    if found is None:
        raise InvalidArgument(
            f"publish_context.backend {backend!r}: this node stages {', '.join(sorted(STAGERS))} volumes",
            reason="backend_unsupported",
            field="publish_context.backend",
        )
    return found


def backend_of(context: Mapping[str, str]) -> str:
    return context.get("backend") or "file"


async def stage(req: StageRequest) -> Staged:
    return await stager(backend_of(req.context)).stage(req)


async def unstage(staged: Staged, *, node_id: str, fenced: bool = False) -> None:
    await stager(staged.backend).unstage(staged, fenced=fenced, node_id=node_id)


async def expand(staged: Staged, *, in_use: bool) -> None:
    await stager(staged.backend).expand(staged, in_use=in_use)


def is_staged(staged: Staged) -> bool:
    return stager(staged.backend).is_staged(staged)


async def publish(source: str, target: str, *, readonly: bool) -> None:
    """Bind the staged volume (its mount, or its device node) onto a pod's target."""
    await asyncio.to_thread(mounts.bind, source, target, readonly=readonly)


async def unpublish(target: str, *, fenced: bool = False) -> None:
    """Unmount every mount stacked on a target (then the caller removes it)."""
    await asyncio.to_thread(unmount, target, fenced=fenced)


def unmount(target: str, *, fenced: bool) -> None:
    """Unmount everything at `target`; a busy mount is detached lazily only when `fenced`: a
    lazily detached file system stays writable through the files still open on it, which
    is harmless only once the storage has cut this node off."""
    while mounts.is_mounted(target):
        try:
            mounts.umount(target)
        except HostCommandError:
            if not fenced:
                raise
            mounts.umount(target, lazy=True)

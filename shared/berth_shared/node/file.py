"""Staging a file-backend volume: its file (the publish context's `path`) on a loop
device, formatted once if blank, mounted (or left raw for block access)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from berth_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from berth_shared.node import host, mounts
from berth_shared.node.staging import Staged, StageRequest, unmount

DEFAULT_FS = "ext4"


class FileStager:
    def source(self, context: Mapping[str, str]) -> str:
        path = context.get("path")
        if not path:
            field = "publish_context.path"
            raise InvalidArgument(f"{field} is required", reason="missing_field", field=field)
        return path

    async def stage(self, req: StageRequest) -> Staged:
        return await asyncio.to_thread(self._stage, req)

    def _stage(self, req: StageRequest) -> Staged:
        path = Path(self.source(req.context))
        if not path.is_file():
            raise NotFound(f"volume {req.volume_id}: its file {path} is not on this host", reason="volume_file_missing")
        device = host.attach_loop(path, readonly=req.readonly)
        if req.on_device is not None:
            req.on_device(device)
        staged = Staged(volume_id=req.volume_id, backend="file", source=str(path), device=device, readonly=req.readonly)
        if req.target is None:
            return staged
        fstype = req.fstype or host.filesystem_of(device) or DEFAULT_FS
        options = list(req.mount_options)
        host.mount_device(device, req.target, fstype, readonly=req.readonly, options=options)
        return staged.model_copy(update={"mount": req.target, "fs_type": fstype, "mount_options": options})

    async def unstage(self, staged: Staged, *, fenced: bool, node_id: str) -> None:
        await asyncio.to_thread(self._unstage, staged, fenced)

    def _unstage(self, staged: Staged, fenced: bool) -> None:
        """Unmount, then detach the device this node attached, only while it still backs the
        volume and nothing mounts it (a fence may have detached it, and the number may
        belong to someone else's volume since)."""
        if staged.mount:
            unmount(staged.mount, fenced=fenced)
        device = staged.device
        if device and device in host.loops_backed_by(Path(staged.source)) and not mounts.mounts_of(device):
            host.detach_loop(device)

    async def expand(self, staged: Staged, *, in_use: bool) -> None:
        await asyncio.to_thread(grow, staged, in_use)

    def is_staged(self, staged: Staged) -> bool:
        if staged.device is None or staged.device not in host.loops_backed_by(Path(staged.source)):
            return False
        return staged.mount is None or mounts.is_mounted(staged.mount)


def grow(staged: Staged, in_use: bool) -> None:
    """The loop device sees its file's new size, then the file system grows to fill it."""
    if staged.device is None:
        return
    info = host.loop(staged.device)
    if info is None or info.autoclear:
        raise FailedPrecondition(f"volume {staged.volume_id}: its loop device {staged.device} is gone; stage it again")
    host.refresh_loop(staged.device)
    if staged.mount and staged.fs_type:
        host.grow_filesystem(staged.device, staged.mount, staged.fs_type, in_use=in_use, options=staged.mount_options)


# -- the calls of the attacher's node agent, until it stages through `staging` too -----------


async def stage(path: Path, staging_dir: str | None, *, fstype: str = DEFAULT_FS, readonly: bool = False) -> Staged:
    req = StageRequest(path.name, {"path": str(path)}, "", staging_dir, path.parent, fstype=fstype, readonly=readonly)
    return await FileStager().stage(req)


async def unstage(path: Path, staging_dir: str | None) -> None:
    """Unmount, then detach every loop device of the file that nothing mounts."""

    def run() -> None:
        if staging_dir is not None:
            unmount(staging_dir, fenced=False)
        for device in host.loops_backed_by(path):
            if not mounts.mounts_of(device):
                host.detach_loop(device)

    await asyncio.to_thread(run)

"""Node side of the file backend: a volume file on a loop device, formatted once, mounted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from berth_shared.node import host


@dataclass(frozen=True)
class Staged:
    device: str
    mount: str | None


async def stage(path: Path, staging_dir: str | None, *, fstype: str = "ext4", readonly: bool = False) -> Staged:
    """Attach the file to a loop device; with a staging dir, format it if blank and mount it.
    Every step checks what is already there, so a repeated call is a no-op."""
    if not path.exists():
        raise FileNotFoundError(f"volume file {path} does not exist")
    device = await host.attach_loop(path)
    if staging_dir is None:  # raw block access
        return Staged(device, None)
    if not readonly:
        await host.format_if_blank(device, fstype)
    await host.mount(device, staging_dir, fstype=fstype, options=["ro"] if readonly else None)
    return Staged(device, staging_dir)


async def unstage(path: Path, staging_dir: str | None) -> None:
    """Unmount and detach, in that order; a repeated call is a no-op."""
    if staging_dir is not None:
        await host.umount(staging_dir)
    for device in host.loops_backed_by(path):
        if not host.mounts_of(device):
            await host.detach_loop(device)

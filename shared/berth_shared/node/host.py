"""This host's block devices: loop devices over files, and the file systems on devices
(detect, format once, grow). Mounts are in `mounts`, the host tools' runner in `run`, the
file backend's storage-side cut in `cutoff`. Everything here is synchronous and bounded
(see `run`); async callers go through `berth_shared.node.staging`."""

from __future__ import annotations

import contextlib
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from berth_shared.errors import FailedPrecondition
from berth_shared.node import mounts
from berth_shared.node.run import HostCommandError, run

FILESYSTEMS = ("ext4", "xfs")
is_mounted = mounts.is_mounted  # for the attacher's tests, until they use `mounts`


@dataclass(frozen=True)
class Loop:
    device: str  # /dev/loopN
    backing: str  # the backing file, as the kernel names it (" (deleted)" removed)
    autoclear: bool  # detached already, gone once its last user lets go (what a fence leaves)


def _sysfs(device: str, name: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path(f"/sys/block/{os.path.basename(device)}/{name}").read_text().strip()
    return None


def loop(device: str) -> Loop | None:
    """What backs a loop device (None: not a loop device, or not bound to anything)."""
    backing = _sysfs(device, "loop/backing_file")
    if backing is None:
        return None
    return Loop(device, backing.removesuffix(" (deleted)"), _sysfs(device, "loop/autoclear") == "1")


def loops_backed_by(path: Path) -> list[str]:
    """Every loop device whose backing file is `path` (read from sysfs: no losetup per call),
    those a fence detached but a process still holds included."""
    want = str(path.resolve())
    found = []
    for bf in glob.glob("/sys/block/loop*/loop/backing_file"):
        info = loop("/dev/" + bf.split("/")[3])
        if info is not None and info.backing == want:
            found.append(info.device)
    return sorted(found)


def loop_devices_available() -> bool:
    return os.path.exists("/dev/loop-control") and os.geteuid() == 0


def attach_loop(path: Path, *, direct_io: bool = False, readonly: bool = False) -> str:
    """A loop device over `path`: one already bound to it (a retried stage) if it is live,
    else a new one. A loop that a fence detached (autoclear) is never reused: its file
    system, if some process still pins it, is shut down, and mounting that device again
    would hand the next user the dead file system instead of a fresh one."""
    for device in loops_backed_by(path):
        info = loop(device)
        if info is not None and not info.autoclear:
            return device
    argv = ["losetup", "--find", "--show"]
    if direct_io:
        # The loop device then keeps no second page cache of the file: a write that returned
        # has reached the backing store (a fenced network client fails at once).
        argv.append("--direct-io=on")
    if readonly:
        argv.append("--read-only")
    device = run(*argv, str(path)).stdout.strip().splitlines()[-1].strip()
    if not readonly:
        # A fence marks the devices it cuts read-only (BLKROSET, see `cutoff`), and the
        # kernel keeps that mark on the device number when the loop is freed and reused.
        run("blockdev", "--setrw", device)
    # The IO limits on the device's number are the last volume's: this one starts without
    # (the watcher applies its own). Imported here: the backends package imports this one.
    from berth_shared.backends import blkio

    blkio.forget_device(device)
    return device


def detach_loop(device: str) -> None:
    """Detach (idempotent). A device still in use is only marked to go when released."""
    done = run("losetup", "-d", device, check=False)
    if done.returncode != 0 and "No such device" not in done.output:
        raise HostCommandError(f"losetup -d {device} failed: {done.output[:200]}")


def refresh_loop(device: str) -> None:
    """Make a loop device see its backing file's new size (after the file grew)."""
    run("losetup", "-c", device)


def device_size(device: str) -> int:
    """A block device's size in bytes (from sysfs: 512-byte sectors)."""
    name = os.path.basename(os.path.realpath(device))
    with open(f"/sys/class/block/{name}/size") as f:
        return int(f.read().strip()) * 512


def filesystem_of(device: str) -> str | None:
    done = run("blkid", "-p", "-o", "value", "-s", "TYPE", device, check=False, timeout=30)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def format_if_blank(device: str, fstype: str) -> bool:
    """mkfs only a device that carries no file system: never wipe data. True if formatted.
    No discard: the device is blank already, and a discard over a network block device
    (rbd-fuse) costs minutes."""
    if fstype not in FILESYSTEMS:
        raise FailedPrecondition(f"unsupported file system {fstype!r}; use ext4 or xfs")
    current = filesystem_of(device)
    if current:
        if current != fstype:
            raise FailedPrecondition(f"{device} already holds {current}, not {fstype}", reason="fs_type_mismatch")
        return False
    if fstype == "ext4":
        run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", device, timeout=120)
    else:
        run("mkfs.xfs", "-q", "-f", "-K", device, timeout=120)
    return True


def readonly_options(fstype: str) -> list[str]:
    """Mount options that guarantee a read-only mount writes nothing, not even a journal
    replay (another node may own the volume's writes)."""
    return ["ro", "norecovery"] if fstype == "xfs" else ["ro", "noload"]


def mount_device(device: str, target: str, fstype: str, *, readonly: bool, options: list[str] | None = None) -> None:
    """Mount a block device's file system at `target`, formatting it first only if it is
    blank and the mount is writable (idempotent)."""
    if readonly:
        if filesystem_of(device) is None:
            raise FailedPrecondition(f"{device} has no file system to mount readonly", reason="no_filesystem")
        opts = readonly_options(fstype) + [o for o in options or [] if o not in ("rw", "ro")]
    else:
        format_if_blank(device, fstype)
        opts = list(options or [])
    mounts.mount(device, target, fstype=fstype, options=opts or None)


def grow_filesystem(
    device: str, mountpoint: str, fstype: str, *, in_use: bool, options: list[str] | None = None
) -> None:
    """Grow a mounted file system to fill its device (ext4: resize2fs, xfs: xfs_growfs),
    online. Online ext4 growth needs CAP_SYS_RESOURCE; without it, a file system no pod
    uses yet (kubelet expands right after staging) is grown offline instead, and mounted
    again with `options`."""
    if fstype == "xfs":
        run("xfs_growfs", mountpoint, timeout=300)
        return
    if fstype not in ("ext4", "ext3", "ext2"):
        raise FailedPrecondition(f"cannot grow a {fstype} file system online", reason="fs_not_growable")
    try:
        run("resize2fs", device, timeout=300)
    except HostCommandError as exc:
        if fstype != "ext4" or "Permission denied" not in exc.detail or in_use:
            raise
        mounts.umount(mountpoint)
        fsck = run("e2fsck", "-f", "-p", device, check=False, timeout=300)
        if fsck.returncode > 1:  # 1: errors corrected
            raise HostCommandError(f"e2fsck of {device} failed ({fsck.returncode}): {fsck.output[:300]}") from exc
        run("resize2fs", device, timeout=300)
        mounts.mount(device, mountpoint, fstype=fstype, options=options or None)

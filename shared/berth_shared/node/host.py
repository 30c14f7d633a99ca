"""This host's block devices and mounts: loop devices, file systems, mount table, and the
file-system shutdown that fences a mount (every later I/O fails with EIO)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from berth_shared.errors import BerthError, FailedPrecondition

FS_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32), honoured by ext4, xfs and f2fs
FS_GOING_FLAGS_NOLOGFLUSH = 0x2  # stop at once: nothing more reaches the device


class HostCommandError(BerthError):
    code = "internal"
    status = 500
    title = "Host command failed"


async def run(*argv: str, check: bool = True) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace").strip()
    if check and proc.returncode != 0:
        raise HostCommandError(f"{argv[0]} failed ({proc.returncode}): {text[:300]}")
    return proc.returncode or 0, text


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: str


def mounts() -> list[Mount]:
    """The mount table (from /proc/self/mountinfo, which shows every bind mount)."""
    found: list[Mount] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, source = right.split()[:2]
            found.append(Mount(source=source, target=_unescape(fields[4]), fstype=fstype, options=fields[5]))
    return found


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_of(device: str) -> list[Mount]:
    return [m for m in mounts() if m.source == device]


def is_mounted(target: str) -> bool:
    real = os.path.realpath(target)
    return any(m.target == real for m in mounts())


def loops_backed_by(path: Path) -> list[str]:
    """Loop devices whose backing file is `path` (read from sysfs: no losetup per call)."""
    want = str(path.resolve())
    found = []
    for bf in glob.glob("/sys/block/loop*/loop/backing_file"):
        with contextlib.suppress(OSError), open(bf) as f:
            backing = f.read().strip()
            if backing.removesuffix(" (deleted)") == want:
                found.append("/dev/" + bf.split("/")[3])
    return sorted(found)


def loop_devices_available() -> bool:
    return os.path.exists("/dev/loop-control") and os.geteuid() == 0


async def attach_loop(path: Path) -> str:
    """Attach `path` to a loop device, reusing one already backed by it (idempotent)."""
    existing = loops_backed_by(path)
    if existing:
        return existing[0]
    _, out = await run("losetup", "--find", "--show", str(path))
    return out.splitlines()[-1].strip()


async def detach_loop(device: str) -> None:
    code, out = await run("losetup", "-d", device, check=False)
    if code != 0 and "No such device" not in out and "No such device or address" not in out:
        raise HostCommandError(f"losetup -d {device} failed: {out[:200]}")


async def filesystem_of(device: str) -> str | None:
    code, out = await run("blkid", "-p", "-o", "value", "-s", "TYPE", device, check=False)
    return out.strip() or None if code == 0 else None


async def format_if_blank(device: str, fstype: str) -> bool:
    """mkfs only a device that carries no file system: never wipe data. True if formatted."""
    if fstype not in ("ext4", "xfs"):
        raise FailedPrecondition(f"unsupported file system {fstype!r}; use ext4 or xfs")
    current = await filesystem_of(device)
    if current:
        if current != fstype:
            raise FailedPrecondition(f"{device} already holds {current}, not {fstype}", reason="fs_type_mismatch")
        return False
    args = ["mkfs.ext4", "-q", "-F", device] if fstype == "ext4" else ["mkfs.xfs", "-q", "-f", device]
    await run(*args)
    return True


async def mount(source: str, target: str, *, fstype: str | None = None, options: list[str] | None = None) -> None:
    os.makedirs(target, exist_ok=True)
    if is_mounted(target):
        return
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    await run(*argv, source, target)


async def bind_mount(source: str, target: str, *, readonly: bool) -> None:
    if is_mounted(target):
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).touch(exist_ok=True)
    await run("mount", "--bind", source, target)
    if readonly:
        await run("mount", "-o", "remount,bind,ro", target)


async def umount(target: str, *, lazy: bool = False) -> None:
    if not is_mounted(target):
        return
    await run("umount", *(["-l"] if lazy else []), target)


def shutdown_filesystem(mountpoint: str) -> None:
    """Cut a mounted file system off its device: every later read/write fails with EIO."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)


async def cut_off_file(path: Path) -> list[str]:
    """Fence every use of a backing file on this host: shut down the file systems mounted
    from its loop devices, lazily unmount them, detach the loops. Returns what was cut."""
    cut: list[str] = []
    for device in loops_backed_by(path):
        device_mounts = mounts_of(device)
        if device_mounts:
            with contextlib.suppress(OSError):  # already shut down, or not a shutdown-capable fs
                await asyncio.to_thread(shutdown_filesystem, device_mounts[0].target)
        for m in sorted(device_mounts, key=lambda m: len(m.target), reverse=True):
            await umount(m.target, lazy=True)
            cut.append(m.target)
        await detach_loop(device)
        cut.append(device)
    return cut


async def refresh_loop(device: str) -> None:
    """Make a loop device see its backing file's new size (after the file grew)."""
    await run("losetup", "-c", device)


def device_size(device: str) -> int:
    """A block device's size in bytes (from sysfs: 512-byte sectors)."""
    name = os.path.basename(os.path.realpath(device))
    with open(f"/sys/class/block/{name}/size") as f:
        return int(f.read().strip()) * 512


async def grow_filesystem(device: str, mountpoint: str, fstype: str) -> None:
    """Grow a mounted file system online to fill its device (ext4: resize2fs, xfs: xfs_growfs)."""
    if fstype == "xfs":
        await run("xfs_growfs", mountpoint)
    elif fstype in ("ext4", "ext3", "ext2"):
        await run("resize2fs", device)
    else:
        raise FailedPrecondition(f"cannot grow a {fstype} file system online", reason="fs_not_growable")

"""The mount table, and mounting and unmounting, for the node side and the file backend's
fence. One parser for everything: `/proc/<pid>/mountinfo`, which shows bind mounts and the
device (major:minor) of every mount, so a block device's mounts are found by its number,
whatever name its source has in that namespace.

Nothing here stats a mount point to decide whether it is mounted: a stat of a dead or
wedged FUSE mount (a fenced rbd-fuse or ceph-fuse) fails or hangs in D state, and must
neither hide the mount from its unmount nor block the caller.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from berth_shared.node.run import run

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: str  # per-mount options (ro/rw, nosuid, ...)
    device: int  # st_dev of the mounted file system: a block device's st_rdev when it is one
    mount_id: int = 0  # unique on the host (what /proc/<pid>/fdinfo/<fd> calls mnt_id)


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def table(pid: int | str = "self") -> list[Mount]:
    """The mount table of `pid`'s mount namespace (default: ours)."""
    found: list[Mount] = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 6 or len(tail) < 2:
                continue
            major, _, minor = fields[2].partition(":")
            found.append(
                Mount(
                    source=_unescape(tail[1]),
                    target=_unescape(fields[4]),
                    fstype=tail[0],
                    options=fields[5],
                    device=os.makedev(int(major), int(minor)),
                    mount_id=int(fields[0]),
                )
            )
    return found


def canonical(path: str) -> str:
    """`path` with its parent's symlinks resolved, without touching `path` itself (see the
    module docstring): what the mount table shows for it."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def mounted_at(path: str) -> Mount | None:
    """The topmost mount at `path`, or None."""
    want = canonical(path)
    hits = [m for m in table() if m.target == want]
    return hits[-1] if hits else None


def is_mounted(path: str) -> bool:
    return mounted_at(path) is not None


def device_number(device: str) -> int:
    """st_rdev of a block device node."""
    return os.stat(device).st_rdev


def mounts_of(device: str) -> list[Mount]:
    """Mounts of a block device in our mount namespace."""
    rdev = device_number(device)
    return [m for m in table() if m.device == rdev]


def every_namespace() -> Iterator[tuple[int, list[Mount]]]:
    """One (pid, mount table) per mount namespace on the host, ours first. Processes that go
    away while we look are skipped."""
    seen: set[str] = set()
    pids = [os.getpid(), *sorted(int(p) for p in os.listdir("/proc") if p.isdigit())]
    for pid in pids:
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            yield pid, table(pid)


def mount(source: str, target: str, *, fstype: str | None = None, options: list[str] | None = None) -> None:
    """Mount unless something is mounted there already (idempotent)."""
    os.makedirs(target, exist_ok=True)
    if is_mounted(target):
        return
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    run(*argv, source, target)


def bind(source: str, target: str, *, readonly: bool) -> None:
    """Bind-mount a directory or a device node onto `target`, made if missing (idempotent)."""
    if is_mounted(target):
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).touch(exist_ok=True)
    run("mount", "--bind", source, target)
    if readonly:
        run("mount", "-o", "remount,bind,ro", target)


def umount(target: str, *, lazy: bool = False) -> None:
    """Unmount what is mounted at `target` (nothing there: a no-op). `lazy` detaches it even
    while it is busy; use it only on a file system that can no longer write (a fenced one):
    a lazily detached file system lives on, writable, through the files still open on it."""
    if not is_mounted(target):
        return
    run("umount", *(["-l"] if lazy else []), target)


def umount_all(target: str, *, lazy: bool = False) -> None:
    """Unmount every mount stacked at `target`."""
    while is_mounted(target):
        umount(target, lazy=lazy)

"""The file fence's shutdown: shut down the file system on a block device, wherever it is
reachable from, and print the path it went through (nothing when the device carries no
live file system).

A child process of `cutoff`, run through the bounded runner: opening a path on a file
system and the shutdown ioctl are kernel calls that a wedged device could make wait
forever, and a thread stuck there could never be taken back from the fence. The parent
runs it as `command(device)`: this file as a script on the standard library only
(`python -I -S`), with the device's mount paths and the FUSE mounts to skip worked out by
the parent from the one mount table (`mounts`, which reads /proc only and never touches
the device). Importing the berth_shared package takes a second and more on a busy host;
every fence waits for this child. (`python -m berth_shared.node.fsdown DEVICE` works too
and works the mounts out itself.)

Where: the device's mounts in every mount namespace on the host (a CSI node pod's own
namespace included), through `/proc/<pid>/root`; failing that, a file held open on it by
any process (`/proc/<pid>/fd/<n>`), which reaches a file system that was lazily unmounted
while files on it stayed open: it is still writable through them. The shutdown is per
super block, so one path is enough.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import struct
import sys
from collections.abc import Iterator

FS_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32), honoured by ext4, xfs and f2fs
# Mark the file system shut down (every later write fails), commit the journal, then stop.
# Without the log flush (NOLOGFLUSH), tests/test_partition.py saw an fsync that was under
# way during the fence return success after it, for a write that was then not on the
# volume: a lost acknowledged write (Linux 6.18, ext4). With it, every fsync that succeeds
# is durable, and in-flight ones finish before the fence completes.
FS_GOING_FLAGS_LOGFLUSH = 0x1


def shutdown(path: str) -> None:
    """Cut the file system holding `path` off its device: every later read or write on it
    fails with EIO, through descriptors already open too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_FLAGS_LOGFLUSH))
    finally:
        os.close(fd)


def mount_paths(rdev: int) -> tuple[list[str], set[int]]:
    """Paths to the device's mounts in every mount namespace, and the ids of FUSE mounts
    (whose files are not looked at: a stat of one whose daemon is wedged never returns)."""
    from berth_shared.node import mounts  # the parent's side only: the script stays stdlib

    paths: list[str] = []
    fuse: set[int] = set()
    for pid, table in mounts.every_namespace():
        for m in table:
            if m.device == rdev:
                paths.append(f"/proc/{pid}/root{m.target}")
            if m.fstype.startswith("fuse"):
                fuse.add(m.mount_id)
    return paths, fuse


def open_files(rdev: int, fuse: set[int]) -> Iterator[str]:
    """Files held open on device `rdev` by any process, not on the FUSE mounts `fuse`."""
    for proc in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{proc}/fd"):
                with contextlib.suppress(OSError, ValueError):
                    if _mount_id(proc, fd) in fuse:
                        continue
                    path = f"/proc/{proc}/fd/{fd}"
                    if os.stat(path).st_dev == rdev:
                        yield path


def handles(rdev: int) -> Iterator[str]:
    """Paths into the file system on device `rdev`: mounts first, then open files."""
    paths, fuse = mount_paths(rdev)
    yield from paths
    yield from open_files(rdev, fuse)


def command(device: str) -> list[str]:
    """The child's command line for `device`: this file on the standard library only."""
    paths, fuse = mount_paths(os.stat(device).st_rdev)
    skip = ",".join(str(i) for i in sorted(fuse))
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), device, f"--skip-fuse={skip}", *paths]


def _mount_id(pid: str, fd: str) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return -1


def main(argv: list[str]) -> int:
    device, rest = argv[0], argv[1:]
    rdev = os.stat(device).st_rdev
    if rest and rest[0].startswith("--skip-fuse="):
        fuse = {int(i) for i in rest[0].split("=", 1)[1].split(",") if i}
        candidates: Iterator[str] = itertools.chain(rest[1:], open_files(rdev, fuse))
    else:
        candidates = handles(rdev)
    for path in candidates:
        try:
            shutdown(path)
        except OSError:
            continue  # gone meanwhile, or not a file system that can shut down: try the next
        print(path)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`python -m berth_shared.node.freeze freeze|thaw /dev/loopN...`: freeze (or thaw) the file
systems on block devices, wherever they are mounted, for a consistent cut across volumes.

FIFREEZE flushes a file system to its device and holds every later write until FITHAW,
so while the file systems of several file volumes are frozen, their backing files hold
one point in time, which the file backend then copies (`FileBackend.create_group_snapshot`).
A freeze outlives the process that made it (it belongs to the super block), which is what
lets one child freeze, the backend copy, and another child thaw; and why every attempt
(and the delete) ends with a thaw of every member, so a crash while frozen holds pods'
writes only until the operation is resumed or rolled back.

A child of the bounded runner, like `fsdown`: a freeze waits for writes in flight, and a
wedged device could keep that ioctl waiting forever.

The output is one line per device: `frozen <device> <path>`, `thawed <device>`,
`readonly <device>` (nothing can write it: nothing to hold) or `raw <device>` (written
without a file system this host can freeze: the cut cannot be made consistent); exit 0.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import sys
from pathlib import Path

from berth_shared.node.fsdown import handles

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)


def _ioctl(path: str, request: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, request, struct.pack("i", 0))
    finally:
        os.close(fd)


def _readonly(device: str) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/sys/block/{os.path.basename(device)}/ro").read_text().strip() == "1"
    return False


def freeze(device: str) -> str:
    if _readonly(device):
        return f"readonly {device}"
    for path in handles(os.stat(device).st_rdev):
        try:
            _ioctl(path, FIFREEZE)
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # frozen already: held all the same
                return f"frozen {device} {path}"
            continue  # gone meanwhile, or not a file system that freezes: try the next
        return f"frozen {device} {path}"
    return f"raw {device}"


def thaw(device: str) -> str:
    for path in handles(os.stat(device).st_rdev):
        try:
            _ioctl(path, FITHAW)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: not frozen
                continue
        break  # one path per super block is enough
    return f"thawed {device}"


def main(action: str, devices: list[str]) -> int:
    step = {"freeze": freeze, "thaw": thaw}[action]
    for device in devices:
        print(step(device), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process
    sys.exit(main(sys.argv[1], sys.argv[2:]))

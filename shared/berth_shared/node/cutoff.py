"""The file backend's storage-side cut (its fence): every use of a volume's file on this
host stops, whoever made it and from whichever mount or network namespace.

The file backend's storage is this host's kernel: a node reaches a volume through a loop
device over its file, never through a network, so no partition separates a node from it
and no network is needed to cut it off. Per loop device over the file:

1. `blockdev --setro`: raw writers (block volumes) fail with EPERM from now on, through
   descriptors they already hold. (The kernel only warns about writes a file system
   issues to a read-only device, hence step 2.)
2. the file system on it, if any, is shut down (`FS_IOC_SHUTDOWN`, no log flush): every
   later read or write fails with EIO, open descriptors included, and nothing more of it
   reaches the device. Reached through any mount namespace or open file (`fsdown`).
3. its mounts in our namespace are lazily unmounted, and the loop device is detached (it
   goes once its last user lets go).

1 and 2 are the cut; 3 is tidying. Every step runs through the bounded runner, so a device
stuck in the kernel fails the fence (to be retried) instead of hanging it.
"""

from __future__ import annotations

from pathlib import Path

from berth_shared.node import fsdown, host, mounts
from berth_shared.node.run import run

SHUTDOWN_TIMEOUT_S = 30.0


def cut_off_file(path: Path) -> list[str]:
    """Fence every use of a backing file on this host; returns what was cut."""
    cut: list[str] = []
    for device in host.loops_backed_by(path):
        run("blockdev", "--setro", device, timeout=SHUTDOWN_TIMEOUT_S)
        via = run(*fsdown.command(device), timeout=SHUTDOWN_TIMEOUT_S).stdout
        if via.strip():
            cut.append(f"shutdown {via.strip()}")
        for m in sorted(mounts.mounts_of(device), key=lambda m: len(m.target), reverse=True):
            mounts.umount(m.target, lazy=True)
            cut.append(m.target)
        host.detach_loop(device)
        cut.append(device)
    return cut

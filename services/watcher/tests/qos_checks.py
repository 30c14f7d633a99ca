"""Host helpers of the QoS tests: the cgroup files read and changed behind the backend's
back, a volume's file on a loop device as a node's stage makes it, and a writer that
floods a device (a nightly backup)."""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from berth_shared.backends import blkio
from berth_shared.node import host


def throttle_or_skip() -> blkio.Throttle:
    throttle, why = blkio.find_throttle(None)
    if throttle is None:
        pytest.skip(f"no cgroup IO controller to enforce limits with: {why}")
    return throttle


def held(throttle: blkio.Throttle, device: str) -> dict[str, int]:
    """The device's limits as the cgroup files hold them (read by the test, not the backend)."""
    dev = blkio.device_number(device)
    out: dict[str, int] = {}
    if throttle.version == 2:
        for line in (throttle.path / "io.max").read_text().splitlines():
            head, *pairs = line.split()
            if head == dev:
                out = {k: int(v) for k, _, v in (p.partition("=") for p in pairs) if v != "max"}
        return out
    for key, name in blkio.V1_FILES.items():
        for line in (throttle.path / name).read_text().splitlines():
            head, value = line.split()
            if head == dev:
                out[key] = int(value)
    return out


def tamper(throttle: blkio.Throttle, device: str, write_iops: int) -> None:
    dev = blkio.device_number(device)
    if throttle.version == 2:
        (throttle.path / "io.max").write_text(f"{dev} wiops={write_iops}\n")
    else:
        (throttle.path / blkio.V1_FILES["write_iops"]).write_text(f"{dev} {write_iops}\n")


@contextmanager
def attached(path: Path) -> Iterator[str]:
    """The volume's file on a loop device of this host, as a node's stage makes it."""
    device = host.attach_loop(path, direct_io=True)
    try:
        yield device
    finally:
        host.detach_loop(device)


@contextmanager
def writer(device: str) -> Iterator[list[int]]:
    """A backup job: direct 4 KiB writes to the device as fast as it lets them through."""
    stop = threading.Event()
    done = [0]

    def loop() -> None:
        block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
        block.write(b"b" * 4096)
        fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
        try:
            while not stop.is_set():
                os.pwrite(fd, block, (done[0] % 1024) * 4096)
                done[0] += 1
        finally:
            os.close(fd)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(10)

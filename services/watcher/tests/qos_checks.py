"""Helpers of the QoS tests: the cgroup files read and changed behind the backend's back, a
volume's file on a loop device as a node's stage makes it, a writer that floods a device (a
nightly backup), and a watcher brought to rest (no run but the test's own)."""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from watcher_harness import WatcherStack

from berth_shared.backends import blkio
from berth_shared.node import host
from berth_testing import eventually


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


async def quiet(st: WatcherStack, volume_events: int) -> None:
    """The tenant's first `volume_events` volume events are in the stream and consumed by the
    watcher, and no QoS run is queued or running: from now on, the runs the test asks for
    are the only ones."""
    stream, subjects = st.settings.events_stream, f"berth.events.{st.tenants.tenant_a}.volume.>"

    async def stored() -> int:
        info = await st.bus.js.stream_info(stream, subjects_filter=subjects)
        return sum((info.state.subjects or {}).values())

    await eventually(stored, lambda n: n >= volume_events, within=30, what=f"{volume_events} volume events")
    durable = f"watcher-volumes-{st.settings.schema_name}"

    async def consumed() -> bool:
        info = await st.bus.js.consumer_info(stream, durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await eventually(consumed, within=30, what="the watcher's volume events consumed")

    async def idle() -> bool:
        r = await st.watcher.get("/v1/runs", params={"job": "qos"}, headers=st.h())
        return all(x["status"] not in ("queued", "running") for x in r.json()["items"])

    await eventually(idle, within=60, what="no QoS run queued or running")

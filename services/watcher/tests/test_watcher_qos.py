"""The QoS job end to end: size-scaled limits applied through the file backend to the host's
cgroups (the loop device over a volume's file), read back from the cgroup files; not
enforced while nothing is attached; drift put back; a resize applied within one run; the
volumes at their limit found from the IO counters (HTTP and metrics)."""

from __future__ import annotations

import asyncio
import mmap
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from watcher_harness import WatcherStack, watcher_stack

from berth_shared.backends import blkio
from berth_shared.node import host
from berth_testing import MakeSettings, Tenants, eventually, needs_loop

pytestmark = needs_loop


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


async def qos_of(st: WatcherStack, volume_id: str) -> dict[str, Any]:
    resp = await st.watcher.get("/v1/qos/volumes", params={"limit": 1000}, headers=st.h())
    assert resp.status_code == 200, resp.text
    found = [v for v in resp.json()["items"] if v["volume_id"] == volume_id]
    assert found, f"no QoS state for {volume_id}"
    item: dict[str, Any] = found[0]
    return item


def actions(run: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [a for a in run["actions"] if a["kind"] == kind]


POLICY = {
    # 2 GiB -> 100 + 2 x 10 = 120 write IOPS; 10 GiB -> 200; the ceiling stops it at 300.
    "write_iops": {"base": 100, "per_gib": 10, "floor": 110, "ceiling": 300},
    "read_bps": {"per_gib": 10_000_000, "floor": 5_000_000},
    "saturation_pct": 75.0,
}


async def test_file_volume_limits_applied_enforced_repaired_and_resized(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    throttle = throttle_or_skip()
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        resp = await st.watcher.put("/v1/qos/policies/standard", json=POLICY, headers=st.h())
        assert resp.status_code == 200, resp.text
        vol = await st.volume("db-0", size_gib=2)
        other = await st.volume("db-1")

        # Not attached anywhere: wanted, recorded, and said not to be enforced.
        run = await st.run("qos")
        assert run["status"] == "complete", run
        state = await qos_of(st, vol["id"])
        assert state["wanted"] == {"write_iops": 120, "read_bps": 20_000_000}
        assert not state["enforced"] and "not attached" in state["detail"]

        with attached(st.volume_file(vol["id"])) as device:
            # Attached since the last run: the next run puts the limits on the loop device, as
            # an apply (a new place), not as a drift.
            await st.run("qos")
            assert held(throttle, device) == {"write_iops": 120, "read_bps": 20_000_000}
            assert not st.events.of("qos.drift_repaired.v1", volume_id=vol["id"])
            state = await qos_of(st, vol["id"])
            assert state["enforced"] and device in state["detail"]
            assert state["applied"] == {"write_iops": 120, "read_bps": 20_000_000}

            # The kernel holds the device to it: 60 direct writes at 120/s take about half a second.
            start = time.monotonic()
            with writer(device) as done:
                await eventually(lambda: done[0] >= 60, within=30, what="60 writes")
            assert time.monotonic() - start >= 0.4, "the limit is enforced"

            # Someone changes the limit behind the watcher's back: the next run puts it back.
            tamper(throttle, device, 5000)
            run = await st.run("qos")
            [repair] = actions(run, "qos_repair")
            assert repair["target"] == vol["id"] and "5000" in repair["detail"]
            assert held(throttle, device) == {"write_iops": 120, "read_bps": 20_000_000}
            [drift] = await eventually(lambda: st.events.of("qos.drift_repaired.v1", volume_id=vol["id"]))
            assert drift["data"]["found"]["write_iops"] == 5000 and drift["data"]["tenant"] == tenants.tenant_a

            # A backup floods it: at its limit for a whole interval, it is who causes the load.
            await st.run("qos")  # a fresh sample to measure from
            with writer(device):
                await asyncio.sleep(2.0)  # the interval measured over, not a wait for a condition
                await st.run("qos")
            state = await qos_of(st, vol["id"])
            assert state["saturated"], state
            assert state["load"]["write_iops"] >= 0.75 * 120 and state["load"]["write_iops"] <= 130
            hot = (await st.watcher.get("/v1/qos/volumes", params={"saturated_only": True}, headers=st.h())).json()[
                "items"
            ]
            assert [v["volume_id"] for v in hot] == [vol["id"]], "the idle volume is not named"
            findings = await st.findings(kind="qos_saturated")
            assert [f["resource_id"] for f in findings] == [vol["id"]]
            assert "write_iops" in findings[0]["details"]["at_limit"]
            metrics = (await st.watcher.get("/metrics", headers=st.h())).text
            assert f'berth_watcher_qos_load{{rate="write_iops",volume="{vol["id"]}"}}' in metrics
            assert "berth_watcher_qos_saturated{" in metrics

            # Grown to 10 GiB: the expanded event queues a run, which applies the larger limit.
            resp = await st.prov.post(f"/v1/volumes/{vol['id']}/expand", json={"size_gib": 10}, headers=st.h(tenants.a))
            assert resp.status_code == 200, resp.text
            await eventually(
                lambda: held(throttle, device).get("write_iops") == 200, within=30, what="the 10 GiB limit"
            )
            assert held(throttle, device) == {"write_iops": 200, "read_bps": 100_000_000}
        # The kernel keeps limits on a freed loop device's number: the next volume on it
        # must not inherit them.
        with attached(st.volume_file(other["id"])) as device2:
            assert held(throttle, device2) == {}
            run = await st.run("qos")
            assert held(throttle, device2) == {"write_iops": 110, "read_bps": 10_000_000}, "its own, at the floor"

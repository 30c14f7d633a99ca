"""The QoS job on the real Ceph fixture: a volume type's size-scaled limits become the RBD
image's librbd config (`conf_rbd_qos_*` image metadata, read back here with the bindings),
librbd holds a client to them, a limit changed by hand is put back and reported, a client
writing flat out is found at its limit from the mgr's counters, and a resize is applied by
the run its event queues."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from ceph_clusters import rbd_image, register_ceph
from qos_checks import quiet
from watcher_harness import WatcherStack, watcher_stack

from berth_shared.backends import ceph_bindings
from berth_testing import MakeSettings, Tenants, eventually
from berth_testing.ceph import RBD_POOL, CephCluster

POLICY = {
    # A total and per-direction limits: 2 GiB -> 100 + 2 x 50 = 200 IOPS, 20 write IOPS.
    "iops": {"base": 100, "per_gib": 50, "ceiling": 1000},
    "write_iops": {"base": 10, "per_gib": 5, "floor": 20},
    "bps": {"per_gib": 8_000_000, "floor": 10_000_000},
}


def qos_metadata(ceph: CephCluster, volume_id: str) -> dict[str, int]:
    """The image's `conf_rbd_qos_*` metadata, as librbd reads it: {"iops": 200, ...}."""
    with rbd_image(ceph, volume_id) as img:
        meta = dict(img.metadata_list())
    prefix, suffix = "conf_rbd_qos_", "_limit"
    return {
        k[len(prefix) : -len(suffix)]: int(v)
        for k, v in meta.items()
        if k.startswith(prefix) and k.endswith(suffix) and int(v) > 0
    }


def set_metadata(ceph: CephCluster, volume_id: str, key: str, value: str) -> None:
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, volume_id) as img:
        img.metadata_set(key, value)


def timed_writes(ceph: CephCluster, volume_id: str, n: int) -> float:
    """Seconds for `n` 4 KiB writes by a librbd client of the image (which applies its QoS)."""
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, volume_id) as img:
        start = time.monotonic()
        for i in range(n):
            img.write(b"w" * 4096, i * 4096)
        return time.monotonic() - start


def write_until(ceph: CephCluster, volume_id: str, stop: threading.Event) -> None:
    """4 KiB writes by a librbd client of the image until `stop`."""
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, volume_id) as img:
        i = 0
        while not stop.is_set():
            img.write(b"f" * 4096, (i % 256) * 4096)
            i += 1


async def _run_and_read(st: WatcherStack, volume_id: str) -> dict[str, Any]:
    await st.run("qos")
    return await qos_of(st, volume_id)


async def qos_of(st: WatcherStack, volume_id: str) -> dict[str, Any]:
    resp = await st.watcher.get("/v1/qos/volumes", params={"limit": 1000}, headers=st.h())
    assert resp.status_code == 200, resp.text
    [item] = [v for v in resp.json()["items"] if v["volume_id"] == volume_id]
    return dict(item)


async def test_rbd_volume_limits_applied_repaired_and_resized(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        await register_ceph(st.prov, tenants.admin, ceph, "rbd", name=f"ceph-{tmp_path.name[-12:]}")
        resp = await st.watcher.put("/v1/qos/policies/ceph-rbd", json=POLICY, headers=st.h())
        assert resp.status_code == 200, resp.text
        vol = await st.volume("pg-0", size_gib=2, volume_type="ceph-rbd")
        vid = vol["id"]

        # The volume.created event queued a run already; this one finds it applied, or applies it.
        await st.run("qos")
        want = {"iops": 200, "write_iops": 20, "bps": 16_000_000}
        assert qos_metadata(ceph, vid) == want
        state = await qos_of(st, vid)
        assert state["enforced"] and "librbd" in state["detail"] and state["applied"] == want

        # librbd holds its clients to it: 60 writes at 20/s (the first second's burst aside).
        took = await asyncio.to_thread(timed_writes, ceph, vid, 60)
        assert took >= 1.5, f"60 writes took {took:.2f} s under a 20 IOPS limit"

        # Changed by hand (`rbd image-meta set`) and one removed: the next run puts both back.
        set_metadata(ceph, vid, "conf_rbd_qos_write_iops_limit", "9999")
        set_metadata(ceph, vid, "conf_rbd_qos_iops_limit", "0")
        run = await st.run("qos")
        [repair] = [a for a in run["actions"] if a["kind"] == "qos_repair"]
        assert repair["target"] == vid and "9999" in repair["detail"]
        assert qos_metadata(ceph, vid) == want
        [drift] = await eventually(lambda: st.events.of("qos.drift_repaired.v1", volume_id=vid))
        assert drift["data"]["found"] == {"write_iops": 9999, "bps": 16_000_000}
        assert drift["data"]["wanted"] == want
        assert drift["subject"] == vid and drift["data"]["tenant"] == tenants.tenant_a
        run = await st.run("qos")
        assert not [a for a in run["actions"] if a["target"] == vid], "in line again: nothing to do"

        # A librbd client writing flat out is held at 20 writes/s: the mgr's per-image
        # counters show the load, and the volume is named as running at its limit.
        stop = threading.Event()
        flood = threading.Thread(target=write_until, args=(ceph, vid, stop), daemon=True)
        flood.start()
        try:
            hot = await eventually(
                lambda: _run_and_read(st, vid),
                lambda state: state["saturated"],
                within=120,
                every=1.0,
                what="the volume at its write limit",
            )
        finally:
            stop.set()
            flood.join(30)
        assert hot["load"]["write_iops"] > 0, hot["load"]
        [finding] = [f for f in await st.findings(kind="qos_saturated") if f["resource_id"] == vid]
        assert "write_iops" in finding["details"]["at_limit"]

        # Grown to 10 GiB: the volume.expanded event queues a run that applies the larger limits.
        resp = await st.prov.post(f"/v1/volumes/{vid}/expand", json={"size_gib": 10}, headers=st.h(tenants.a))
        assert resp.status_code == 200, resp.text
        grown = {"iops": 600, "write_iops": 60, "bps": 80_000_000}
        await eventually(lambda: qos_metadata(ceph, vid) == grown, within=30, what="the 10 GiB limits")


async def test_drift_checks_take_turns_oldest_first(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    """With room for one read-back per run, each run checks the volume checked longest ago,
    so every volume's drift is found within as many runs as there are volumes."""
    async with watcher_stack(make_settings, tenants, tmp_path, qos_drift_checks_per_run=1) as st:
        await register_ceph(st.prov, tenants.admin, ceph, "rbd", name=f"ceph-{tmp_path.name[-12:]}")
        resp = await st.watcher.put("/v1/qos/policies/ceph-rbd", json=POLICY, headers=st.h())
        assert resp.status_code == 200, resp.text
        a = (await st.volume("turn-a", volume_type="ceph-rbd"))["id"]
        b = (await st.volume("turn-b", volume_type="ceph-rbd"))["id"]
        await quiet(st, volume_events=2)
        assert all(qos_metadata(ceph, v).get("write_iops") == 20 for v in (a, b))

        async def repaired() -> list[str]:
            run = await st.run("qos")
            return [x["target"] for x in run["actions"] if x["kind"] == "qos_repair"]

        for vid in (a, b):
            set_metadata(ceph, vid, "conf_rbd_qos_write_iops_limit", "999")
        first, second = await repaired(), await repaired()
        assert sorted(first + second) == sorted([a, b]) and len(first) == len(second) == 1, (first, second)
        # The next run finds the first one in line again (and says it was checked now) ...
        assert await repaired() == []
        # ... so a drift of it waits for the other's turn, then is found.
        set_metadata(ceph, first[0], "conf_rbd_qos_write_iops_limit", "999")
        assert await repaired() == []
        assert await repaired() == first

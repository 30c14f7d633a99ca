"""The QoS job end to end: size-scaled limits applied through the file backend to the host's
cgroups (the loop device over a volume's file), read back from the cgroup files; not
enforced while nothing is attached; drift put back; a resize applied within one run; the
volumes at their limit found from the IO counters (HTTP and metrics)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from qos_checks import attached, held, quiet, tamper, throttle_or_skip, writer
from watcher_harness import WatcherStack, watcher_stack

from berth_testing import MakeSettings, Tenants, eventually, needs_loop

pytestmark = needs_loop


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
        await quiet(st, volume_events=2)  # the runs the creates queued are over

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

"""ControllerModifyVolume through the socket: a VolumeAttributesClass's `type` moves a
volume to another volume type in place (the provisioner's retype, idempotent) and the
watcher puts the new type's IO limits on the volume's loop device, from the event alone;
bad parameters are INVALID_ARGUMENT, an unknown volume NOT_FOUND."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from csi_harness import CsiStack, csi_stack, mount_cap, read, rpc_error, stage_publish, teardown, write
from watcher_harness import ON_DEMAND

from berth_csi.pb import csi
from berth_shared.backends import blkio
from berth_shared.node import host
from berth_testing import MakeSettings, Tenants, eventually, loop_skip_reason, running
from berth_watcher.app import create_app as watcher_app
from berth_watcher.config import WatcherSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")
Code = grpc.StatusCode
POLICIES = {
    "standard": {"write_iops": {"floor": 100}},
    # 2 GiB -> 500 + 2 x 100 = 700 write IOPS
    "gold": {"write_iops": {"base": 500, "per_gib": 100, "ceiling": 5000}},
    "silver": {"write_iops": {"base": 500, "per_gib": 100, "ceiling": 5000}},  # gold's limits
}


async def with_types(st: CsiStack) -> None:
    """`gold` and `silver`, served by the local cluster beside `standard`, and `archive`,
    served nowhere."""
    admin = st.h(st.tenants.admin)
    for name in ("gold", "silver", "archive"):
        r = await st.prov.post("/v1/volume-types", json={"name": name}, headers=admin)
        assert r.status_code in (200, 201), r.text
    [local] = (await st.prov.get("/v1/clusters", headers=admin)).json()["items"]
    r = await st.prov.patch(
        f"/v1/clusters/{local['id']}", json={"volume_types": ["standard", "gold", "silver"]}, headers=admin
    )
    assert r.status_code == 200, r.text


@asynccontextmanager
async def with_watcher(make_settings: MakeSettings, st: CsiStack) -> AsyncIterator[httpx.AsyncClient]:
    """The watcher beside the CSI stack, with a QoS policy for each type."""
    settings = make_settings(WatcherSettings, **ON_DEMAND, tick_s=0.1)
    async with AsyncExitStack() as es:
        watcher = await es.enter_async_context(running(watcher_app(settings), st.tenants.admin))
        for vtype, policy in POLICIES.items():
            r = await watcher.put(f"/v1/qos/policies/{vtype}", json=policy)
            assert r.status_code == 200, r.text
        yield watcher


def modify(volume_id: str, **params: str) -> Any:
    return csi.ControllerModifyVolumeRequest(volume_id=volume_id, mutable_parameters=params)


async def test_modify_volume_changes_its_class_and_limits_in_place(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    if why := loop_skip_reason():
        pytest.skip(why)
    throttle, no_throttle = blkio.find_throttle(None)
    if throttle is None:
        pytest.skip(f"no cgroup IO controller here: {no_throttle}")
    async with csi_stack(make_settings, tenants, tmp_path) as st, with_watcher(make_settings, st) as watcher:
        await with_types(st)
        caps = await st.controller.ControllerGetCapabilities(csi.ControllerGetCapabilitiesRequest())
        assert csi.ControllerServiceCapability.RPC.MODIFY_VOLUME in {c.rpc.type for c in caps.capabilities}
        vol = await st.create("pvc-modify", 2)
        vid = vol.volume_id
        pctx = await st.publish(vid)
        staging, target = await stage_publish(st, vid, pctx, mount_cap(), "pod-0")
        try:
            write(f"{target}/data", b"kept")
            [device] = host.loops_backed_by(st.cluster_root / "volumes" / f"{vid}.img")
            r = await watcher.post("/v1/runs", json={"job": "qos", "wait_s": 60})
            assert r.json()["status"] == "complete", r.text
            assert blkio.read(throttle, device).write_iops == 100, "standard's limit on the attached volume"

            # The VolumeAttributesClass changes: the external-resizer calls ControllerModifyVolume.
            await st.controller.ControllerModifyVolume(modify(vid, type="gold"))
            # No run asked for: the volume.retyped event's run applies gold's limit.
            await eventually(
                lambda: blkio.read(throttle, device).write_iops == 700, within=30, what="gold's 700 write IOPS"
            )
            got = await st.controller.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vid))
            assert got.volume.volume_context["type"] == "gold"
            r = await watcher.get("/v1/qos/volumes")
            [state] = [v for v in r.json()["items"] if v["volume_id"] == vid]
            assert (state["volume_type"], state["applied"], state["enforced"]) == ("gold", {"write_iops": 700}, True)
            # To a class with the same limits: they stay; the record follows the type.
            await st.controller.ControllerModifyVolume(modify(vid, type="silver"))

            async def recorded_type() -> str:
                r = await watcher.get("/v1/qos/volumes")
                return str(next(v["volume_type"] for v in r.json()["items"] if v["volume_id"] == vid))

            await eventually(recorded_type, lambda t: t == "silver", within=30, what="the silver record")
            assert blkio.read(throttle, device).write_iops == 700
            await st.controller.ControllerModifyVolume(modify(vid, type="gold"))
            await eventually(recorded_type, lambda t: t == "gold", within=30, what="the gold record")
            # Retried (the sidecar does): OK, nothing changes; the data and mount never moved.
            await st.controller.ControllerModifyVolume(modify(vid, type="gold"))
            assert host.loops_backed_by(st.cluster_root / "volumes" / f"{vid}.img") == [device]
            assert read(f"{target}/data") == b"kept"
        finally:
            await teardown(st, vid, staging, target)


async def test_modify_volume_refuses_bad_input(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        await with_types(st)
        vid = (await st.create("pvc-bad-modify")).volume_id
        invalid: list[tuple[Any, str]] = [
            (modify("", type="gold"), "volume_id"),
            (modify(vid), "mutable_parameters is required"),
            (modify(vid, iops="5000"), "unknown key(s) iops"),
            (modify(vid, type=""), "mutable_parameters.type"),
            (modify(vid, type="platinum"), "unknown volume type"),
            (modify(vid, type="archive"), "does not serve volume type archive"),
        ]
        for request, says in invalid:
            err = await rpc_error(st.controller.ControllerModifyVolume(request))
            assert err.code() == Code.INVALID_ARGUMENT and says in (err.details() or ""), (request, err.details())
        for missing in ("vol-0000", "not an id!"):
            err = await rpc_error(st.controller.ControllerModifyVolume(modify(missing, type="gold")))
            assert err.code() == Code.NOT_FOUND, err.details()
        # Another team's volume is not found either.
        other = csi.ControllerModifyVolumeRequest(
            volume_id=vid, mutable_parameters={"type": "gold"}, secrets={"berthToken": tenants.b}
        )
        assert (await rpc_error(st.controller.ControllerModifyVolume(other))).code() == Code.NOT_FOUND
        got = await st.controller.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vid))
        assert got.volume.volume_context["type"] == "standard", "nothing changed"

        # A VolumeAttributesClass named at create wins over the StorageClass's type.
        gold = await st.create("pvc-gold", mutable_parameters={"type": "gold"})
        assert gold.volume_context["type"] == "gold"
        err = await rpc_error(st.create("pvc-zone", mutable_parameters={"zone": "default"}))
        assert err.code() == Code.INVALID_ARGUMENT and "mutable_parameters" in (err.details() or "")

"""Every RPC repeated gives the same result: sidecars and kubelet retry whatever timed out."""

from __future__ import annotations

from pathlib import Path

import pytest
from csi_harness import GIB, csi_stack, kubelet_dir, leftovers, mount_cap, read, rmdir, write

from berth_csi.pb import csi
from berth_shared.node import host, mounts
from berth_testing import MakeSettings, Tenants, needs_loop

# gRPC's asyncio poller binds to one event loop: every CSI test shares the session's.
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_controller_calls_repeated_give_the_same_result(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c = st.controller

        async def twice(method: str, req: object) -> object:
            first = await getattr(c, method)(req)
            again = await getattr(c, method)(req)
            assert again == first, method
            return first

        cap = mount_cap()
        create = csi.CreateVolumeRequest(
            name="pvc-again", capacity_range=csi.CapacityRange(required_bytes=GIB), volume_capabilities=[cap]
        )
        vid = (await twice("CreateVolume", create)).volume.volume_id  # type: ignore[attr-defined]
        publish = csi.ControllerPublishVolumeRequest(volume_id=vid, node_id="node-a", volume_capability=cap)
        await twice("ControllerPublishVolume", publish)
        await twice("ControllerGetVolume", csi.ControllerGetVolumeRequest(volume_id=vid))
        await twice(
            "ValidateVolumeCapabilities",
            csi.ValidateVolumeCapabilitiesRequest(volume_id=vid, volume_capabilities=[cap]),
        )
        await twice("ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-a"))
        expand = csi.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=2 * GIB)
        )
        await twice("ControllerExpandVolume", expand)
        snap_req = csi.CreateSnapshotRequest(source_volume_id=vid, name="snap-again")
        snap = (await twice("CreateSnapshot", snap_req)).snapshot  # type: ignore[attr-defined]
        await twice("ListSnapshots", csi.ListSnapshotsRequest(snapshot_id=snap.snapshot_id))
        await twice("ListVolumes", csi.ListVolumesRequest())
        await twice("DeleteSnapshot", csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        await twice("DeleteVolume", csi.DeleteVolumeRequest(volume_id=vid))
        listed = await c.ListVolumes(csi.ListVolumesRequest())
        assert list(listed.entries) == []
        assert leftovers(st)["files"] == []


@needs_loop
async def test_node_calls_repeated_give_the_same_result(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        n = st.node
        cap = mount_cap()
        vid = (await st.create("pvc-node-again")).volume_id
        pctx = await st.publish(vid)
        staging = kubelet_dir(st.path("staging", vid))
        target = st.path("pods", "p", "mount")
        kubelet_dir(str(Path(target).parent))
        stage = csi.NodeStageVolumeRequest(
            volume_id=vid, publish_context=pctx, staging_target_path=staging, volume_capability=cap
        )
        publish = csi.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap
        )
        for _ in range(2):
            await n.NodeStageVolume(stage)
        write(Path(staging, "f"), b"x")
        await n.NodeStageVolume(stage)  # never reformats
        assert read(Path(staging, "f")) == b"x"
        for _ in range(2):
            await n.NodePublishVolume(publish)
        held = [m.target for m in mounts.table() if m.target in (staging, target)]
        assert sorted(held) == sorted([staging, target])  # one mount each, nothing stacked
        assert len(host.loops_backed_by(Path(pctx["path"]))) == 1
        sizes = {
            (await n.NodeExpandVolume(csi.NodeExpandVolumeRequest(volume_id=vid, volume_path=target))).capacity_bytes
            for _ in range(2)
        }
        assert sizes == {GIB}
        for _ in range(2):
            await n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))
        for _ in range(2):
            await n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))
        await st.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid))
        await st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
        rmdir(staging)
        assert leftovers(st) == {"files": [], "loops": [], "mounts": []}

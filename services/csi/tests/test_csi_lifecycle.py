"""End to end through the socket, on real loop devices and mounts: the whole life of a
volume as Kubernetes drives it, and nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from csi_harness import (
    GIB,
    block_cap,
    csi_stack,
    exists,
    kubelet_dir,
    leftovers,
    mount_cap,
    read,
    rmdir,
    write,
    zone_topology,
)

from berth_csi import ZONE_KEY
from berth_csi.pb import csi
from berth_shared.node import host, mounts
from berth_testing import MakeSettings, Tenants, needs_loop

Usage = csi.VolumeUsage

# gRPC's asyncio poller binds to one event loop: every CSI test shares the session's.
pytestmark = pytest.mark.asyncio(loop_scope="session")


@needs_loop
async def test_volume_life_through_the_socket(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c, n = st.controller, st.node
        # A name no Berth resource name allows: mapped to a stable derived name.
        created = await st.create(
            "pvc/team a:data 0",
            accessibility_requirements=csi.TopologyRequirement(
                requisite=[zone_topology()], preferred=[zone_topology()]
            ),
        )
        vid = created.volume_id
        assert created.capacity_bytes == GIB
        assert created.volume_context["type"] == "standard"
        assert [dict(t.segments) for t in created.accessible_topology] == [{ZONE_KEY: "default"}]

        # external-attacher: ControllerPublish; kubelet: stage, publish.
        pctx = await st.publish(vid)
        assert pctx["backend"] == "file" and exists(pctx["path"])
        staging = kubelet_dir(st.path("staging", vid))
        target = st.path("pods", "p1", "mount")
        kubelet_dir(os.path.dirname(target))
        cap = mount_cap()
        stage = csi.NodeStageVolumeRequest(
            volume_id=vid, publish_context=pctx, staging_target_path=staging, volume_capability=cap
        )
        await n.NodeStageVolume(stage)
        assert mounts.is_mounted(staging)
        publish = csi.NodePublishVolumeRequest(
            volume_id=vid, publish_context=pctx, staging_target_path=staging, target_path=target, volume_capability=cap
        )
        await n.NodePublishVolume(publish)
        assert mounts.is_mounted(target)
        write(Path(target, "table.dat"), b"committed row\n")

        stats = await n.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target))
        usage = {u.unit: u for u in stats.usage}
        assert 0.8 * GIB < usage[Usage.BYTES].total <= GIB and usage[Usage.BYTES].used > 0
        assert usage[Usage.INODES].total > 0 and usage[Usage.INODES].used > 0
        assert not stats.volume_condition.abnormal
        got = await c.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vid))
        assert list(got.status.published_node_ids) == ["node-a"]

        # Pod gone: unpublish, unstage, ControllerUnpublish.
        await n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))
        assert not exists(target)
        await n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))
        assert not mounts.is_mounted(staging) and host.loops_backed_by(Path(pctx["path"])) == []
        await c.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-a"))
        got = await c.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vid))
        assert list(got.status.published_node_ids) == []

        # external-resizer: grow to 2 GiB; the node grows the file system on the next stage.
        grown = await c.ControllerExpandVolume(
            csi.ControllerExpandVolumeRequest(
                volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=2 * GIB), volume_capability=cap
            )
        )
        assert grown.capacity_bytes == 2 * GIB and grown.node_expansion_required

        pctx = await st.publish(vid)
        await n.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=vid, publish_context=pctx, staging_target_path=staging, volume_capability=cap
            )
        )
        expanded = await n.NodeExpandVolume(
            csi.NodeExpandVolumeRequest(
                volume_id=vid,
                volume_path=staging,
                staging_target_path=staging,
                capacity_range=csi.CapacityRange(required_bytes=2 * GIB),
                volume_capability=cap,
            )
        )
        assert expanded.capacity_bytes == 2 * GIB
        await n.NodePublishVolume(publish)
        assert read(Path(target, "table.dat")) == b"committed row\n"
        stats = await n.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target))
        assert {u.unit: u for u in stats.usage}[Usage.BYTES].total > 1.8 * GIB
        await n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))
        await n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))
        await c.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-a"))

        # external-snapshotter: snapshot; a new volume from it holds the data.
        snap = (
            await c.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=vid, name="snapshot-7f3a/with:odd name"))
        ).snapshot
        assert snap.ready_to_use and snap.source_volume_id == vid and snap.size_bytes == 2 * GIB
        restored = await st.create(
            "pvc-restored",
            size_gib=2,
            volume_content_source=csi.VolumeContentSource(
                snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
            ),
        )
        assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
        rid = restored.volume_id
        rctx = await st.publish(rid)
        rstaging = kubelet_dir(st.path("staging", rid))
        await n.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=rid, publish_context=rctx, staging_target_path=rstaging, volume_capability=cap
            )
        )
        assert read(Path(rstaging, "table.dat")) == b"committed row\n"
        await n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=rid, staging_target_path=rstaging))
        await c.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=rid, node_id="node-a"))

        # Delete everything: nothing may be left.
        await c.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        await c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=rid))
        await c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
        for d in (staging, rstaging):
            rmdir(d)  # kubelet removes its staging directories
        listed = await c.ListVolumes(csi.ListVolumesRequest())
        assert list(listed.entries) == []
        assert leftovers(st) == {"files": [], "loops": [], "mounts": []}
        assert st.node_service.state.all() == []


@needs_loop
async def test_raw_block_volume(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c, n = st.controller, st.node
        cap = block_cap()
        vol = await st.create("pvc-block", cap=cap)
        pctx = await st.publish(vol.volume_id, cap=cap)
        staging = kubelet_dir(st.path("staging", "blk"))
        target = st.path("pods", "p2", "dev")  # kubelet makes the parent; the plugin makes the file
        kubelet_dir(os.path.dirname(target))
        await n.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=vol.volume_id, publish_context=pctx, staging_target_path=staging, volume_capability=cap
            )
        )
        assert not mounts.is_mounted(staging)  # block: the loop device only
        device = st.node_service.state.get(vol.volume_id).staged.device
        assert host.loops_backed_by(Path(pctx["path"])) == [device]
        await n.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=vol.volume_id, staging_target_path=staging, target_path=target, volume_capability=cap
            )
        )
        write(target, b"raw block", offset=GIB // 2)  # through the bind-mounted device node
        assert read(device, offset=GIB // 2, size=9) == b"raw block"
        stats = await n.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=target))
        assert [(u.unit, u.total) for u in stats.usage] == [(Usage.BYTES, GIB)]
        grown = await c.ControllerExpandVolume(
            csi.ControllerExpandVolumeRequest(
                volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=2 * GIB), volume_capability=cap
            )
        )
        assert not grown.node_expansion_required
        await n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=target))
        assert not exists(target)
        await n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging))
        await c.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id))
        await c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        rmdir(staging)
        assert leftovers(st) == {"files": [], "loops": [], "mounts": []}


@needs_loop
async def test_online_expansion_of_a_mounted_xfs_volume(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c, n = st.controller, st.node
        cap = mount_cap(fs_type="xfs")
        vol = await st.create("pvc-xfs", cap=cap)
        vid = vol.volume_id
        pctx = await st.publish(vid)
        staging = kubelet_dir(st.path("staging", vid))
        target = st.path("pods", "p3", "mount")
        kubelet_dir(str(Path(target).parent))
        await n.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=vid, publish_context=pctx, staging_target_path=staging, volume_capability=cap
            )
        )
        await n.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap
            )
        )
        assert [m.fstype for m in mounts.table() if m.target == target] == ["xfs"]
        write(Path(target, "before"), b"written before the resize")

        # In use all along: the controller grows the file, the node grows xfs under the pod.
        await c.ControllerExpandVolume(
            csi.ControllerExpandVolumeRequest(
                volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=3 * GIB), volume_capability=cap
            )
        )
        grown = await n.NodeExpandVolume(
            csi.NodeExpandVolumeRequest(volume_id=vid, volume_path=target, volume_capability=cap)
        )
        assert grown.capacity_bytes == 3 * GIB
        stats = await n.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target))
        assert {u.unit: u for u in stats.usage}[Usage.BYTES].total > 2.8 * GIB
        assert read(Path(target, "before")) == b"written before the resize"
        write(Path(target, "after"), b"written after")

        await n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))
        await n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))
        await c.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-a"))
        await c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
        rmdir(staging)
        assert leftovers(st) == {"files": [], "loops": [], "mounts": []}

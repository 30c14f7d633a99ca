"""A node whose adapter went silent is fenced; the volume moves with its data; when the
adapter comes back after a reboot it refuses to re-stage, drops its stale mounts and is
unfenced."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from csi_harness import (
    CsiStack,
    NodePlugin,
    csi_stack,
    exists,
    kubelet_dir,
    leftovers,
    mount_cap,
    read,
    rmdir,
    rpc_error,
    write,
)

from berth_csi.pb import csi, rpc
from berth_csi.server import CsiServer
from berth_shared.node import mounts
from berth_testing import MakeSettings, Tenants, eventually, needs_loop

# gRPC's asyncio poller binds to one event loop: every CSI test shares the session's.
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def node_state(st: CsiStack, node_id: str) -> str:
    r = await st.att.get(f"/v1/nodes/{node_id}", headers=st.h(st.tenants.admin))
    assert r.status_code == 200, r.text
    return str(r.json()["state"])


@needs_loop
async def test_fenced_node_refuses_to_restage_and_cleans_up(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        # The controller runs in the stack's adapter; node-1 and node-2 have their own.
        n1 = await st.add_node(make_settings, "node-1")
        n2 = await st.add_node(make_settings, "node-2")
        cap = mount_cap()
        vid = (await st.create("pvc-fenced")).volume_id
        ctx1 = await st.publish(vid, node_id="node-1")
        staging = kubelet_dir(st.path("staging", "n1", vid))
        target = st.path("pods", "p1", "mount")
        kubelet_dir(str(Path(target).parent))
        stage_1 = csi.NodeStageVolumeRequest(
            volume_id=vid, publish_context=ctx1, staging_target_path=staging, volume_capability=cap
        )
        await n1.node.NodeStageVolume(stage_1)
        await n1.node.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap
            )
        )
        write(Path(target, "table.dat"), b"committed row\n")

        # Single writer: node-2 waits while node-1 holds the volume.
        err = await rpc_error(st.publish(vid, node_id="node-2"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "node-1" in (err.details() or "")

        # node-1's adapter dies; its mounts stay, as on a partitioned node.
        await n1.channel.close()
        await n1.server.stop(grace=0)
        st.extra.remove(n1)
        assert mounts.is_mounted(target)

        async def fenced() -> bool:
            return await node_state(st, "node-1") == "fenced"

        await eventually(fenced, what="node-1 fenced")
        assert not mounts.is_mounted(target) and not mounts.is_mounted(staging)  # the fence cut them

        # The volume moves to node-2 with its data.
        ctx2 = await st.publish(vid, node_id="node-2")
        assert int(ctx2["generation"]) > int(ctx1["generation"])
        staging2 = kubelet_dir(st.path("staging", "n2", vid))
        await n2.node.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=vid, publish_context=ctx2, staging_target_path=staging2, volume_capability=cap
            )
        )
        assert read(Path(staging2, "table.dat")) == b"committed row\n"

        # node-1 reboots and its adapter starts again (a new boot id). From its state files it
        # knows what it held; from the attacher, that it is fenced: it refuses the stale
        # stage, cleans up, and is unfenced (restarted and clean).
        boot_id = tmp_path / "boot_id"
        boot_id.write_text("after-the-reboot\n")
        restarted = CsiServer(n1.server.settings.model_copy(update={"boot_id_file": boot_id}))
        channel = grpc.aio.insecure_channel(f"unix://{restarted.socket_path}")
        st.extra.append(NodePlugin(restarted, channel, rpc.NodeStub(channel)))
        await restarted.start()
        node_1 = st.extra[-1].node
        err = await rpc_error(node_1.NodeStageVolume(stage_1))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()

        async def alive() -> bool:
            return await node_state(st, "node-1") == "alive"

        await eventually(alive, what="node-1 unfenced")
        assert restarted.node is not None and restarted.node.state.all() == []
        assert not exists(target)
        assert not mounts.is_mounted(staging)
        # Even unfenced, the publish context from before the fence stays refused.
        err = await rpc_error(node_1.NodeStageVolume(stage_1))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "stale" in (err.details() or "")
        # node-2 was never disturbed.
        assert read(Path(staging2, "table.dat")) == b"committed row\n"

        await n2.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging2))
        await st.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid))
        await st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
        for d in (staging, staging2):
            rmdir(d)
        assert leftovers(st) == {"files": [], "loops": [], "mounts": []}

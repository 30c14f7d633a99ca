"""Identity, the controller's listings, topology and tenant mapping, through the socket."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from csi_harness import AM, GIB, bare_adapter, csi_stack, mount_cap, rpc_error, zone_topology

from berth_csi import DRIVER_NAME, ZONE_KEY
from berth_csi.mapping import resource_name, size_gib
from berth_csi.pb import csi, rpc
from berth_csi.tokens import PageTokens
from berth_shared.errors import Aborted
from berth_testing import MakeSettings, Tenants

PluginCap = csi.PluginCapability
CtrlRPC = csi.ControllerServiceCapability.RPC.Type
NodeRPC = csi.NodeServiceCapability.RPC.Type

# gRPC's asyncio poller binds to one event loop: every CSI test shares the session's.
pytestmark = pytest.mark.asyncio(loop_scope="session")


def test_names_and_sizes_map_stably() -> None:
    assert resource_name("pvc-1a2b") == "pvc-1a2b"
    odd = resource_name("pvc/team a:data 0")
    assert odd.startswith("csi-") and odd == resource_name("pvc/team a:data 0") != resource_name("pvc/team a:data 1")
    assert resource_name("x" * 200).startswith("csi-")
    assert size_gib(csi.CapacityRange(required_bytes=1)) == 1
    assert size_gib(csi.CapacityRange(required_bytes=GIB + 1)) == 2
    assert size_gib(csi.CapacityRange(limit_bytes=5 * GIB + 7)) == 1  # only a limit: the smallest volume
    assert size_gib(csi.CapacityRange()) is None


def test_page_tokens_are_sealed_to_their_listing_and_adapter() -> None:
    tokens = PageTokens()
    token = tokens.issue("volumes", "vol-00ab")
    assert token and "vol-00ab" not in token  # opaque
    assert tokens.position("volumes", token) == "vol-00ab"
    assert tokens.position("volumes", "") is None and tokens.issue("volumes", None) == ""
    refused = [
        ("volumes", "vol-00ab"),  # a well-formed id, not a token
        ("snapshots:", token),  # another listing's token
        ("volumes", token[:-2]),  # truncated
        ("volumes", token + "A"),
        ("volumes", "\x00bad"),
        ("volumes", "é" * 10),
        ("volumes", "A" * 600),
    ]
    for scope, bad in refused:
        with pytest.raises(Aborted):
            tokens.position(scope, bad)
    with pytest.raises(Aborted):  # another adapter process (a restart): another key
        PageTokens().position("volumes", token)


async def test_identity_and_node_info(make_settings: MakeSettings) -> None:
    async with bare_adapter(make_settings, zone="zone-1") as bare:
        channel = grpc.aio.insecure_channel(f"unix://{bare.server.socket_path}")
        identity = rpc.IdentityStub(channel)
        info = await identity.GetPluginInfo(csi.GetPluginInfoRequest())
        assert info.name == DRIVER_NAME and info.vendor_version
        caps = (await identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())).capabilities
        services = {c.service.type for c in caps if c.HasField("service")}
        assert services == {
            PluginCap.Service.CONTROLLER_SERVICE,
            PluginCap.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS,
            PluginCap.Service.GROUP_CONTROLLER_SERVICE,
        }
        assert [c.volume_expansion.type for c in caps if c.HasField("volume_expansion")] == [
            PluginCap.VolumeExpansion.ONLINE
        ]
        assert (await identity.Probe(csi.ProbeRequest())).ready.value is True

        node_info = await bare.node.NodeGetInfo(csi.NodeGetInfoRequest())
        assert node_info.node_id == "node-a" and dict(node_info.accessible_topology.segments) == {ZONE_KEY: "zone-1"}
        assert node_info.max_volumes_per_node == 0  # no limit unless the node's settings say
        node_caps = (await bare.node.NodeGetCapabilities(csi.NodeGetCapabilitiesRequest())).capabilities
        assert {c.rpc.type for c in node_caps} == {
            NodeRPC.STAGE_UNSTAGE_VOLUME,
            NodeRPC.GET_VOLUME_STATS,
            NodeRPC.EXPAND_VOLUME,
            NodeRPC.VOLUME_CONDITION,
        }
        ctrl_caps = (
            await bare.controller.ControllerGetCapabilities(csi.ControllerGetCapabilitiesRequest())
        ).capabilities
        assert {
            CtrlRPC.CREATE_DELETE_VOLUME,
            CtrlRPC.PUBLISH_UNPUBLISH_VOLUME,
            CtrlRPC.LIST_VOLUMES,
            CtrlRPC.GET_CAPACITY,
            CtrlRPC.CREATE_DELETE_SNAPSHOT,
            CtrlRPC.LIST_SNAPSHOTS,
            CtrlRPC.CLONE_VOLUME,
            CtrlRPC.EXPAND_VOLUME,
            CtrlRPC.GET_VOLUME,
            CtrlRPC.VOLUME_CONDITION,
            CtrlRPC.PUBLISH_READONLY,
            CtrlRPC.LIST_VOLUMES_PUBLISHED_NODES,
            CtrlRPC.MODIFY_VOLUME,
        } == {c.rpc.type for c in ctrl_caps}

        # Probe is ready only while the bus is connected.
        assert bare.server.bus is not None
        await bare.server.bus.close()
        assert (await identity.Probe(csi.ProbeRequest())).ready.value is False
        await channel.close()


async def test_list_volumes_pages_and_reports_published_nodes(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c = st.controller
        ids = [(await st.create(f"pvc-{i}")).volume_id for i in range(3)]
        await st.publish(ids[1])
        seen: list[str] = []
        published: dict[str, list[str]] = {}
        token = ""
        pages = 0
        while True:
            page = await c.ListVolumes(csi.ListVolumesRequest(max_entries=2, starting_token=token))
            pages += 1
            assert len(page.entries) <= 2
            for e in page.entries:
                seen.append(e.volume.volume_id)
                published[e.volume.volume_id] = list(e.status.published_node_ids)
                assert not e.status.volume_condition.abnormal
            token = page.next_token
            if not token:
                break
        assert pages == 2 and sorted(seen) == sorted(ids)
        assert published[ids[1]] == ["node-a"] and published[ids[0]] == []
        everything = await c.ListVolumes(csi.ListVolumesRequest())
        assert len(everything.entries) == 3 and not everything.next_token


async def test_list_snapshots_by_id_by_source_and_paged(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c = st.controller
        v1, v2 = (await st.create("pvc-s1")).volume_id, (await st.create("pvc-s2")).volume_id
        snaps = [
            (await c.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=v, name=f"snap-{i}"))).snapshot
            for i, v in enumerate([v1, v1, v2])
        ]
        one = await c.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snaps[2].snapshot_id))
        assert [e.snapshot.snapshot_id for e in one.entries] == [snaps[2].snapshot_id]
        assert one.entries[0].snapshot.ready_to_use and one.entries[0].snapshot.creation_time.seconds > 0
        gone = await c.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id="snap-missing"))
        assert list(gone.entries) == []
        by_source = await c.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=v1))
        assert sorted(e.snapshot.snapshot_id for e in by_source.entries) == sorted(s.snapshot_id for s in snaps[:2])
        first = await c.ListSnapshots(csi.ListSnapshotsRequest(max_entries=2))
        assert len(first.entries) == 2 and first.next_token
        rest = await c.ListSnapshots(csi.ListSnapshotsRequest(max_entries=2, starting_token=first.next_token))
        assert len(rest.entries) == 1 and not rest.next_token
        ids = {e.snapshot.snapshot_id for e in [*first.entries, *rest.entries]}
        assert ids == {s.snapshot_id for s in snaps}


async def test_validate_volume_capabilities(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        vid = (await st.create("pvc-v")).volume_id
        ok = await st.controller.ValidateVolumeCapabilities(
            csi.ValidateVolumeCapabilitiesRequest(
                volume_id=vid, volume_capabilities=[mount_cap(), mount_cap(AM.MULTI_NODE_READER_ONLY)]
            )
        )
        assert len(ok.confirmed.volume_capabilities) == 2
        no = await st.controller.ValidateVolumeCapabilities(
            csi.ValidateVolumeCapabilitiesRequest(
                volume_id=vid, volume_capabilities=[mount_cap(AM.MULTI_NODE_MULTI_WRITER)]
            )
        )
        assert not no.HasField("confirmed") and "MULTI_NODE_MULTI_WRITER" in no.message


async def test_unpublish_without_a_node_unpublishes_everywhere(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        await st.add_node(make_settings, "node-b")
        vid = (await st.create("pvc-rox")).volume_id
        cap = mount_cap(AM.MULTI_NODE_READER_ONLY)
        ctx_a = await st.publish(vid, "node-a", cap=cap)
        ctx_b = await st.publish(vid, "node-b", cap=cap)
        assert ctx_a["path"] == ctx_b["path"]
        got = await st.controller.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vid))
        assert sorted(got.status.published_node_ids) == ["node-a", "node-b"]
        await st.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid))
        got = await st.controller.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vid))
        assert list(got.status.published_node_ids) == []


async def test_topology_preferred_then_requisite(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        # No cluster serves zone-x: placement falls back to the next zone allowed.
        req = csi.TopologyRequirement(
            requisite=[zone_topology("zone-x"), zone_topology("default")], preferred=[zone_topology("zone-x")]
        )
        vol = await st.create("pvc-topo", accessibility_requirements=req)
        assert [dict(t.segments) for t in vol.accessible_topology] == [{ZONE_KEY: "default"}]
        again = await st.create("pvc-topo", accessibility_requirements=req)
        assert again.volume_id == vol.volume_id
        pinned = await st.create("pvc-pinned", parameters={"type": "standard", "zone": "default"})
        assert pinned.volume_context["zone"] == "default"


async def test_tenant_comes_from_the_storage_class_secret(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c = st.controller
        team_b = {"berthToken": tenants.b}
        vol = await st.create("pvc-team-b", secrets=team_b)
        r = await st.prov.get(f"/v1/volumes/{vol.volume_id}", headers=st.h(tenants.b))
        assert r.status_code == 200 and r.json()["tenant"] == tenants.tenant_b
        # The default token is tenant a's: team b's volume is invisible to it.
        err = await rpc_error(c.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vol.volume_id)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert list((await c.ListVolumes(csi.ListVolumesRequest())).entries) == []
        # Deleting without team b's secret finds nothing of tenant a's to delete; with it, the volume goes.
        await c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=team_b))
        r = await st.prov.get(f"/v1/volumes/{vol.volume_id}", headers=st.h(tenants.b))
        assert r.status_code == 404


async def test_get_capacity_and_clone(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        before = await st.controller.GetCapacity(
            csi.GetCapacityRequest(parameters={"type": "standard"}, accessible_topology=zone_topology())
        )
        assert before.available_capacity > 0 and before.minimum_volume_size.value == GIB
        src = await st.create("pvc-src", size_gib=2)
        after = await st.controller.GetCapacity(csi.GetCapacityRequest(parameters={"type": "standard"}))
        assert after.available_capacity == before.available_capacity - 2 * GIB
        nowhere = await st.controller.GetCapacity(csi.GetCapacityRequest(accessible_topology=zone_topology("zone-x")))
        assert nowhere.available_capacity == 0
        clone = await st.create(
            "pvc-clone",
            size_gib=2,
            volume_content_source=csi.VolumeContentSource(
                volume=csi.VolumeContentSource.VolumeSource(volume_id=src.volume_id)
            ),
        )
        assert clone.content_source.volume.volume_id == src.volume_id and clone.capacity_bytes == 2 * GIB


async def test_a_full_node_refuses_one_more_volume(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        plugin = await st.add_node(make_settings, "node-small", max_volumes_per_node=2)
        info = await plugin.node.NodeGetInfo(csi.NodeGetInfoRequest())
        assert info.max_volumes_per_node == 2
        v1, v2, v3 = [(await st.create(f"pvc-full-{i}")).volume_id for i in range(3)]
        await st.publish(v1, "node-small")
        await st.publish(v2, "node-small")
        err = await rpc_error(st.publish(v3, "node-small"))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_volumes_per_node 2" in (err.details() or "")
        await st.publish(v2, "node-small")  # a repeated publish takes no new slot
        await st.publish(v3, "node-a")  # the limit is the node's: node-a has none
        unpublish = csi.ControllerUnpublishVolumeRequest(volume_id=v1, node_id="node-small")
        await st.controller.ControllerUnpublishVolume(unpublish)
        await st.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=v3))
        await st.publish(v3, "node-small")  # a slot freed
        listed = await st.controller.ListVolumes(csi.ListVolumesRequest())
        published = {e.volume.volume_id: list(e.status.published_node_ids) for e in listed.entries}
        assert published == {v1: [], v2: ["node-small"], v3: ["node-small"]}

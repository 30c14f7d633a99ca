"""The CSI error-code table, each case through the socket against the real services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_harness import AM, GIB, bare_adapter, block_cap, csi_stack, mount_cap, rpc_error, zone_topology

from berth_csi.errors import STATUS_BY_CODE
from berth_csi.pb import csi
from berth_shared.errors import ERRORS_BY_CODE
from berth_shared.messages.provisioner import MAX_VOLUME_GIB
from berth_testing import MakeSettings, Tenants

Code = grpc.StatusCode

# gRPC's asyncio poller binds to one event loop: every CSI test shares the session's.
pytestmark = pytest.mark.asyncio(loop_scope="session")


def test_every_berth_error_code_has_its_grpc_status() -> None:
    assert set(STATUS_BY_CODE) == set(ERRORS_BY_CODE)
    for code, status in STATUS_BY_CODE.items():
        assert status.name.lower() == code  # one to one, same vocabulary


async def test_already_exists_when_a_name_is_reused_with_another_size(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        first = await st.create("pvc-dup", size_gib=1)
        err = await rpc_error(st.create("pvc-dup", size_gib=2))
        assert err.code() == Code.ALREADY_EXISTS
        # Same name, same size: the same volume (idempotent), not an error.
        assert (await st.create("pvc-dup", size_gib=1)).volume_id == first.volume_id
        # Snapshots too: a name reused for another source volume.
        other = await st.create("pvc-other")
        await st.controller.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=first.volume_id, name="snap-x"))
        err = await rpc_error(
            st.controller.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=other.volume_id, name="snap-x"))
        )
        assert err.code() == Code.ALREADY_EXISTS


async def test_already_exists_when_published_to_the_node_incompatibly(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        vid = (await st.create("pvc-rw")).volume_id
        await st.publish(vid)
        err = await rpc_error(st.publish(vid, readonly=True))
        assert err.code() == Code.ALREADY_EXISTS


async def test_failed_precondition_names_the_node_holding_a_single_writer_volume(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        await st.add_node(make_settings, "node-b")
        vid = (await st.create("pvc-sw")).volume_id
        await st.publish(vid, node_id="node-a")
        err = await rpc_error(st.publish(vid, node_id="node-b"))
        assert err.code() == Code.FAILED_PRECONDITION
        assert "node-a" in (err.details() or "")
        # Deleting a published volume is refused the same way.
        err = await rpc_error(st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid)))
        assert err.code() == Code.FAILED_PRECONDITION and "node-a" in (err.details() or "")


async def test_failed_precondition_for_a_volume_with_snapshots(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        vid = (await st.create("pvc-snapped")).volume_id
        await st.controller.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=vid, name="s1"))
        err = await rpc_error(st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid)))
        assert err.code() == Code.FAILED_PRECONDITION and "snapshot" in (err.details() or "")


async def test_resource_exhausted_over_quota(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        await st.bus.request(
            "berth.provisioner.quota.set",
            {"tenant": tenants.tenant_a, "volumes": 10, "gigabytes": 3},
            token=tenants.admin,
        )
        await st.create("pvc-fits", size_gib=2)
        err = await rpc_error(st.create("pvc-too-big", size_gib=2))
        assert err.code() == Code.RESOURCE_EXHAUSTED and "quota" in (err.details() or "")
        cap = await st.controller.GetCapacity(csi.GetCapacityRequest(parameters={"type": "standard"}))
        assert cap.available_capacity == 1 * GIB


async def test_resource_exhausted_when_no_cluster_serves_the_zone(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        req = csi.TopologyRequirement(requisite=[zone_topology("zone-x")])
        err = await rpc_error(st.create("pvc-nowhere", accessibility_requirements=req))
        assert err.code() == Code.RESOURCE_EXHAUSTED


async def test_not_found(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c, n = st.controller, st.node
        missing = "vol-0000000000000000000000000000000"
        calls: list[tuple[str, Any]] = [
            ("publish", st.publish(missing)),
            ("get", c.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=missing))),
            (
                "validate",
                c.ValidateVolumeCapabilities(
                    csi.ValidateVolumeCapabilitiesRequest(volume_id=missing, volume_capabilities=[mount_cap()])
                ),
            ),
            (
                "expand",
                c.ControllerExpandVolume(
                    csi.ControllerExpandVolumeRequest(
                        volume_id=missing, capacity_range=csi.CapacityRange(required_bytes=GIB)
                    )
                ),
            ),
            ("snapshot", c.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=missing, name="s"))),
            (
                "from snapshot",
                st.create(
                    "pvc-src",
                    volume_content_source=csi.VolumeContentSource(
                        snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id="snap-missing")
                    ),
                ),
            ),
            (
                "from volume",
                st.create(
                    "pvc-clone",
                    volume_content_source=csi.VolumeContentSource(
                        volume=csi.VolumeContentSource.VolumeSource(volume_id="not a volume id!")
                    ),
                ),
            ),
            (
                "node expand",
                n.NodeExpandVolume(csi.NodeExpandVolumeRequest(volume_id=missing, volume_path=st.path("nowhere"))),
            ),
            (
                "stats",
                n.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=missing, volume_path=st.path("nowhere"))),
            ),
        ]
        for what, call in calls:
            err = await rpc_error(call)
            assert err.code() == Code.NOT_FOUND, (what, err.details())
        # Publishing to a node the attacher has never heard of.
        vid = (await st.create("pvc-x")).volume_id
        err = await rpc_error(st.publish(vid, node_id="node-unknown"))
        assert err.code() == Code.NOT_FOUND and "node-unknown" in (err.details() or "")


async def test_out_of_range(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c = st.controller
        # Whole GiB only: 1.5 GiB rounds up to 2, past the 1.5 GiB limit.
        odd = csi.CapacityRange(required_bytes=3 * GIB // 2, limit_bytes=3 * GIB // 2)
        req = csi.CreateVolumeRequest(name="pvc-odd", capacity_range=odd, volume_capabilities=[mount_cap()])
        err = await rpc_error(c.CreateVolume(req))
        assert err.code() == Code.OUT_OF_RANGE and "limit_bytes" in (err.details() or "")
        huge = csi.CapacityRange(required_bytes=(MAX_VOLUME_GIB + 1) * GIB)
        req = csi.CreateVolumeRequest(name="pvc-huge", capacity_range=huge, volume_capabilities=[mount_cap()])
        assert (await rpc_error(c.CreateVolume(req))).code() == Code.OUT_OF_RANGE
        # A volume from a snapshot may not be smaller than the snapshot.
        vid = (await st.create("pvc-2g", size_gib=2)).volume_id
        snap = (await c.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=vid, name="s2"))).snapshot
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
        err = await rpc_error(st.create("pvc-small", size_gib=1, volume_content_source=source))
        assert err.code() == Code.OUT_OF_RANGE
        # Without a size, a volume from a snapshot takes the snapshot's.
        restored = await c.CreateVolume(
            csi.CreateVolumeRequest(name="pvc-same", volume_capabilities=[mount_cap()], volume_content_source=source)
        )
        assert restored.volume.capacity_bytes == 2 * GIB


async def test_aborted_for_a_token_the_plugin_never_gave(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        c = st.controller
        err = await rpc_error(c.ListVolumes(csi.ListVolumesRequest(max_entries=1, starting_token="not/a token")))
        assert err.code() == Code.ABORTED
        err = await rpc_error(c.ListSnapshots(csi.ListSnapshotsRequest(starting_token="\x00bad")))
        assert err.code() == Code.ABORTED
        # Well-formed ids are positions, not tokens: no paging from a guessed or stale id.
        ids = sorted([(await st.create(f"pvc-tok-{i}")).volume_id for i in range(2)])
        err = await rpc_error(c.ListVolumes(csi.ListVolumesRequest(max_entries=1, starting_token=ids[0])))
        assert err.code() == Code.ABORTED and "restart the listing" in (err.details() or "")
        page = await c.ListVolumes(csi.ListVolumesRequest(max_entries=1))
        assert page.next_token and page.next_token != ids[0]
        rest = await c.ListVolumes(csi.ListVolumesRequest(max_entries=1, starting_token=page.next_token))
        assert [e.volume.volume_id for e in [*page.entries, *rest.entries]] == ids
        # A token belongs to its listing: not ListSnapshots', nor another source filter's.
        err = await rpc_error(c.ListSnapshots(csi.ListSnapshotsRequest(starting_token=page.next_token)))
        assert err.code() == Code.ABORTED
        for i, vid in enumerate(ids):
            await c.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=vid, name=f"tok-snap-{i}"))
        snaps = await c.ListSnapshots(csi.ListSnapshotsRequest(max_entries=1, source_volume_id=ids[0]))
        assert len(snaps.entries) == 1 and not snaps.next_token
        snaps = await c.ListSnapshots(csi.ListSnapshotsRequest(max_entries=1))
        assert snaps.next_token
        other = csi.ListSnapshotsRequest(max_entries=1, source_volume_id=ids[1], starting_token=snaps.next_token)
        assert (await rpc_error(c.ListSnapshots(other))).code() == Code.ABORTED


async def test_unauthenticated_without_a_valid_token(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        bad = await rpc_error(st.create("pvc-bad-token", secrets={"berthToken": "not-a-token"}))
        assert bad.code() == Code.UNAUTHENTICATED
    async with bare_adapter(make_settings, default_token=None) as bare:
        req = csi.CreateVolumeRequest(name="pvc-anon", volume_capabilities=[mount_cap()])
        err = await rpc_error(bare.controller.CreateVolume(req))
        assert err.code() == Code.UNAUTHENTICATED and "berthToken" in (err.details() or "")


def _full() -> dict[str, Any]:
    """Valid requests, each to lose one field."""
    cap = mount_cap()
    vid = "vol-0123"
    ctx = {"path": "/nonexistent/vol-0123.img", "backend": "file", "generation": "1"}
    return {
        "CreateVolume": csi.CreateVolumeRequest(name="n", volume_capabilities=[cap]),
        "DeleteVolume": csi.DeleteVolumeRequest(volume_id=vid),
        "ControllerPublishVolume": csi.ControllerPublishVolumeRequest(
            volume_id=vid, node_id="node-a", volume_capability=cap
        ),
        "ControllerUnpublishVolume": csi.ControllerUnpublishVolumeRequest(volume_id=vid),
        "ValidateVolumeCapabilities": csi.ValidateVolumeCapabilitiesRequest(volume_id=vid, volume_capabilities=[cap]),
        "ControllerExpandVolume": csi.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=GIB)
        ),
        "ControllerGetVolume": csi.ControllerGetVolumeRequest(volume_id=vid),
        "CreateSnapshot": csi.CreateSnapshotRequest(source_volume_id=vid, name="s"),
        "DeleteSnapshot": csi.DeleteSnapshotRequest(snapshot_id="snap-1"),
        "NodeStageVolume": csi.NodeStageVolumeRequest(
            volume_id=vid, publish_context=ctx, staging_target_path="/tmp/s", volume_capability=cap
        ),
        "NodeUnstageVolume": csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path="/tmp/s"),
        "NodePublishVolume": csi.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path="/tmp/s", target_path="/tmp/t", volume_capability=cap
        ),
        "NodeUnpublishVolume": csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path="/tmp/t"),
        "NodeGetVolumeStats": csi.NodeGetVolumeStatsRequest(volume_id=vid, volume_path="/tmp/t"),
        "NodeExpandVolume": csi.NodeExpandVolumeRequest(volume_id=vid, volume_path="/tmp/t"),
    }


MISSING = [
    ("CreateVolume", "name"),
    ("CreateVolume", "volume_capabilities"),
    ("DeleteVolume", "volume_id"),
    ("ControllerPublishVolume", "volume_id"),
    ("ControllerPublishVolume", "node_id"),
    ("ControllerPublishVolume", "volume_capability"),
    ("ControllerUnpublishVolume", "volume_id"),
    ("ValidateVolumeCapabilities", "volume_id"),
    ("ValidateVolumeCapabilities", "volume_capabilities"),
    ("ControllerExpandVolume", "volume_id"),
    ("ControllerExpandVolume", "capacity_range"),
    ("ControllerGetVolume", "volume_id"),
    ("CreateSnapshot", "source_volume_id"),
    ("CreateSnapshot", "name"),
    ("DeleteSnapshot", "snapshot_id"),
    ("NodeStageVolume", "volume_id"),
    ("NodeStageVolume", "staging_target_path"),
    ("NodeStageVolume", "volume_capability"),
    ("NodeStageVolume", "publish_context.path"),
    ("NodeUnstageVolume", "volume_id"),
    ("NodeUnstageVolume", "staging_target_path"),
    ("NodePublishVolume", "volume_id"),
    ("NodePublishVolume", "staging_target_path"),
    ("NodePublishVolume", "target_path"),
    ("NodePublishVolume", "volume_capability"),
    ("NodeUnpublishVolume", "volume_id"),
    ("NodeUnpublishVolume", "target_path"),
    ("NodeGetVolumeStats", "volume_id"),
    ("NodeGetVolumeStats", "volume_path"),
    ("NodeExpandVolume", "volume_id"),
    ("NodeExpandVolume", "volume_path"),
]


@pytest.mark.parametrize(("method", "field"), MISSING, ids=[f"{m}-{f}" for m, f in MISSING])
async def test_invalid_argument_names_the_missing_field(make_settings: MakeSettings, method: str, field: str) -> None:
    req = _full()[method]
    if "." in field:
        del req.publish_context[field.split(".")[1]]
    else:
        req.ClearField(field)
    async with bare_adapter(make_settings) as bare:
        stub = bare.node if method.startswith("Node") else bare.controller
        err = await rpc_error(getattr(stub, method)(req))
    assert err.code() == Code.INVALID_ARGUMENT, err.details()
    assert field in (err.details() or "")


@pytest.mark.parametrize(
    ("cap", "why"),
    [
        (csi.VolumeCapability(access_mode=AM(mode=AM.SINGLE_NODE_WRITER)), "access_type"),
        (csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume()), "access_mode"),
        (mount_cap(fs_type="btrfs"), "fs_type"),
        (block_cap(mode=AM.MULTI_NODE_MULTI_WRITER), "MULTI_NODE_MULTI_WRITER"),
    ],
    ids=["no-access-type", "no-access-mode", "fs-type", "multi-writer"],
)
async def test_invalid_argument_for_a_capability_this_plugin_cannot_serve(
    make_settings: MakeSettings, cap: Any, why: str
) -> None:
    async with bare_adapter(make_settings) as bare:
        req = csi.CreateVolumeRequest(name="n", volume_capabilities=[mount_cap(), cap])
        err = await rpc_error(bare.controller.CreateVolume(req))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "volume_capabilities[1]" in (err.details() or "") and why in (err.details() or "")


async def test_invalid_argument_for_bad_parameters_and_ranges(make_settings: MakeSettings) -> None:
    async with bare_adapter(make_settings) as bare:
        c = bare.controller
        cases = [
            (csi.CreateVolumeRequest(name="n", volume_capabilities=[mount_cap()], parameters={"tpye": "x"}), "tpye"),
            (
                csi.CreateVolumeRequest(
                    name="n",
                    volume_capabilities=[mount_cap()],
                    parameters={"zone": "z1"},
                    accessibility_requirements=csi.TopologyRequirement(requisite=[zone_topology("z2")]),
                ),
                "parameters.zone",
            ),
            (
                csi.CreateVolumeRequest(
                    name="n", volume_capabilities=[mount_cap()], capacity_range=csi.CapacityRange(required_bytes=-1)
                ),
                "capacity_range",
            ),
        ]
        for req, field in cases:
            err = await rpc_error(c.CreateVolume(req))
            assert err.code() == Code.INVALID_ARGUMENT and field in (err.details() or ""), err.details()
        err = await rpc_error(c.ListVolumes(csi.ListVolumesRequest(max_entries=-1)))
        assert err.code() == Code.INVALID_ARGUMENT and "max_entries" in (err.details() or "")

"""The GroupController through the socket (file backend, real loop devices and mounts): two
volumes of one database snapshotted at one point in time while mounted and written, each
member restored to a new volume with the data of the cut, and the spec's error codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_harness import csi_stack, leftovers, mount_cap, rpc_error, stage_publish, teardown

from berth_csi.pb import csi, rpc
from berth_testing import MakeSettings, Tenants, loop_skip_reason

Code = grpc.StatusCode
GroupRPC = csi.GroupControllerServiceCapability.RPC.Type

# gRPC's asyncio poller binds to one event loop: every CSI test shares the session's.
pytestmark = pytest.mark.asyncio(loop_scope="session")


def _from(snapshot_id: str) -> Any:
    return csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))


async def test_group_snapshot_of_mounted_volumes_restores_one_point_in_time(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    if (why := loop_skip_reason()) is not None:
        pytest.skip(why)
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        g, c = rpc.GroupControllerStub(st.channel), st.controller
        caps = (await g.GroupControllerGetCapabilities(csi.GroupControllerGetCapabilitiesRequest())).capabilities
        assert [x.rpc.type for x in caps] == [GroupRPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT]

        # A database on two volumes (its log and its data), mounted in pods and being written.
        vids = [(await st.create(name)).volume_id for name in ("pg-wal", "pg-data")]
        staged = []
        for i, vid in enumerate(vids):
            staging, target = await stage_publish(st, vid, await st.publish(vid), mount_cap(), f"db-{i}")
            staged.append((vid, staging, target))
            # Not synced: in the page cache only. The cut must still hold it (frozen, flushed).
            Path(target, "last-commit").write_text(f"txid 1041 on {vid}")

        req = csi.CreateVolumeGroupSnapshotRequest(name="groupsnapshot-2f1c", source_volume_ids=vids)
        gs = (await g.CreateVolumeGroupSnapshot(req)).group_snapshot
        assert gs.ready_to_use and gs.creation_time.seconds > 0
        members = {s.source_volume_id: s.snapshot_id for s in gs.snapshots}
        assert sorted(members) == sorted(vids)
        assert all(s.group_snapshot_id == gs.group_snapshot_id and s.ready_to_use for s in gs.snapshots)
        again = (await g.CreateVolumeGroupSnapshot(req)).group_snapshot  # the sidecar's retry
        assert again.group_snapshot_id == gs.group_snapshot_id and again.snapshots == gs.snapshots
        for vid, _staging, target in staged:
            Path(target, "last-commit").write_text(f"txid 1042 on {vid}")  # after the cut

        other = csi.CreateVolumeGroupSnapshotRequest(name="groupsnapshot-2f1c", source_volume_ids=vids[:1])
        assert (await rpc_error(g.CreateVolumeGroupSnapshot(other))).code() == Code.ALREADY_EXISTS
        ids = list(members.values())
        get = csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id, snapshot_ids=ids)
        assert (await g.GetVolumeGroupSnapshot(get)).group_snapshot == gs
        wrong = csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id, snapshot_ids=ids[:1])
        assert (await rpc_error(g.GetVolumeGroupSnapshot(wrong))).code() == Code.FAILED_PRECONDITION
        missing = csi.GetVolumeGroupSnapshotRequest(group_snapshot_id="gsnap-missing", snapshot_ids=ids)
        assert (await rpc_error(g.GetVolumeGroupSnapshot(missing))).code() == Code.NOT_FOUND

        # Members are the Controller's snapshots: listed with their group, not deletable alone.
        listed = await c.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=ids[0]))
        assert [e.snapshot.group_snapshot_id for e in listed.entries] == [gs.group_snapshot_id]
        err = await rpc_error(c.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=ids[0])))
        assert err.code() == Code.FAILED_PRECONDITION and gs.group_snapshot_id in (err.details() or "")

        # Each member restored: both volumes as they were at the cut.
        for i, (vid, member) in enumerate(members.items()):
            restored = (await st.create(f"pg-restore-{i}", volume_content_source=_from(member))).volume_id
            staging, target = await stage_publish(st, restored, await st.publish(restored), mount_cap(), f"r-{i}")
            assert Path(target, "last-commit").read_text() == f"txid 1041 on {vid}"
            staged.append((restored, staging, target))
        for vid, staging, target in staged:
            await teardown(st, vid, staging, target)

        bad = csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id, snapshot_ids=ids[1:])
        assert (await rpc_error(g.DeleteVolumeGroupSnapshot(bad))).code() == Code.FAILED_PRECONDITION
        delete = csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id, snapshot_ids=ids)
        await g.DeleteVolumeGroupSnapshot(delete)
        await g.DeleteVolumeGroupSnapshot(delete)  # gone already: OK
        get.snapshot_ids[:] = []
        assert (await rpc_error(g.GetVolumeGroupSnapshot(get))).code() == Code.NOT_FOUND
        assert list((await c.ListSnapshots(csi.ListSnapshotsRequest())).entries) == []
        for vid, _staging, _target in staged:
            await c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
        assert leftovers(st) == {"files": [], "loops": [], "mounts": []}


async def test_group_snapshot_requests_are_checked(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with csi_stack(make_settings, tenants, tmp_path) as st:
        g = rpc.GroupControllerStub(st.channel)
        vid = (await st.create("pg-one")).volume_id
        Req = csi.CreateVolumeGroupSnapshotRequest
        cases = [
            (Req(source_volume_ids=[vid]), Code.INVALID_ARGUMENT, "name"),
            (Req(name="g"), Code.INVALID_ARGUMENT, "source_volume_ids"),
            (Req(name="g", source_volume_ids=[vid, vid]), Code.INVALID_ARGUMENT, "twice"),
            (
                Req(name="g", source_volume_ids=[vid], parameters={"pool": "x"}),
                Code.INVALID_ARGUMENT,
                "pool",
            ),
            (Req(name="g", source_volume_ids=[vid, "no/such"]), Code.NOT_FOUND, ""),
            (Req(name="g", source_volume_ids=["vol-gone"]), Code.NOT_FOUND, ""),
        ]
        for req, code, words in cases:
            err = await rpc_error(g.CreateVolumeGroupSnapshot(req))
            assert err.code() == code and words in (err.details() or ""), (req, err)
        assert (await rpc_error(g.GetVolumeGroupSnapshot(csi.GetVolumeGroupSnapshotRequest()))).code() == (
            Code.INVALID_ARGUMENT
        )
        # Another tenant's volume is not found; deleting what does not exist is OK.
        theirs = (await st.create("pg-theirs", secrets={"berthToken": tenants.b})).volume_id
        req = csi.CreateVolumeGroupSnapshotRequest(name="g", source_volume_ids=[vid, theirs])
        assert (await rpc_error(g.CreateVolumeGroupSnapshot(req))).code() == Code.NOT_FOUND
        await g.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id="gsnap-none"))
        await g.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id="not/an id"))

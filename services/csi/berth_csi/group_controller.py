"""The CSI GroupController service: consistent snapshots of several volumes at once.

Each call is one provisioner command (`berth.provisioner.group_snapshot.*`), with the
caller's tenant token, like the Controller service's calls: a group snapshot is made and
kept by the provisioner, idempotent by name, and its member snapshots are the Controller's
snapshots (ListSnapshots shows them with their `group_snapshot_id`; a volume is restored
from one with CreateVolume).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from berth_csi import mapping as m
from berth_csi.controller import Commands, snapshot_message
from berth_csi.errors import required, rpc
from berth_csi.pb import csi
from berth_csi.settings import CsiSettings
from berth_shared.bus import Bus
from berth_shared.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from berth_shared.messages.provisioner import PREFIX as PROVISIONER
from berth_shared.messages.provisioner import GroupSnapshot

RPC = csi.GroupControllerServiceCapability.RPC.Type
CAPABILITIES = (RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,)
# A VolumeGroupSnapshotClass takes no parameter of ours.
PARAMETERS: frozenset[str] = frozenset()


def group_message(gs: GroupSnapshot) -> Any:
    created = Timestamp()
    created.FromDatetime(gs.created_at)
    return csi.VolumeGroupSnapshot(
        group_snapshot_id=gs.id,
        snapshots=[snapshot_message(s) for s in gs.snapshots],
        creation_time=created,
        ready_to_use=gs.status == "available" and all(s.status == "available" for s in gs.snapshots),
    )


def check_members(gs: GroupSnapshot, snapshot_ids: Any) -> None:
    """The CO's list of the group's snapshots, when it gives one, must be the group's."""
    given = set(snapshot_ids)
    if given and given != {s.id for s in gs.snapshots}:
        raise FailedPrecondition(
            f"snapshot_ids do not match group snapshot {gs.id}'s members ({', '.join(s.id for s in gs.snapshots)})",
            reason="group_snapshot_mismatch",
        )


class GroupControllerService:
    def __init__(self, bus: Bus, settings: CsiSettings) -> None:
        self.cmd = Commands(bus, settings)

    @rpc
    async def GroupControllerGetCapabilities(self, request: Any, context: Any) -> Any:
        caps = [
            csi.GroupControllerServiceCapability(rpc=csi.GroupControllerServiceCapability.RPC(type=t))
            for t in CAPABILITIES
        ]
        return csi.GroupControllerGetCapabilitiesResponse(capabilities=caps)

    @rpc
    async def CreateVolumeGroupSnapshot(self, request: Any, context: Any) -> Any:
        required(request.name, "name")
        required(len(request.source_volume_ids), "source_volume_ids")
        m.check_parameters(dict(request.parameters), PARAMETERS)
        ids = list(request.source_volume_ids)
        if len(set(ids)) != len(ids):
            raise InvalidArgument("source_volume_ids: a volume is named twice", field="source_volume_ids")
        for vid in ids:
            if not m.valid_id(vid):
                raise NotFound(f"volume {vid!r} not found", reason="volume_not_found")
        body = {"name": m.resource_name(request.name), "volume_ids": ids}
        data = await self.cmd(
            f"{PROVISIONER}.group_snapshot.create", body, dict(request.secrets), context, request.name
        )
        gs = GroupSnapshot.model_validate(data)
        if gs.status == "error":
            raise Internal(f"group snapshot {gs.id} is in error; see the provisioner")
        return csi.CreateVolumeGroupSnapshotResponse(group_snapshot=group_message(gs))

    async def _get(self, group_snapshot_id: str, secrets: Mapping[str, str], context: Any) -> GroupSnapshot:
        if not m.valid_id(group_snapshot_id):
            raise NotFound(f"group snapshot {group_snapshot_id!r} not found", reason="group_snapshot_not_found")
        body = {"id": group_snapshot_id}
        return GroupSnapshot.model_validate(await self.cmd(f"{PROVISIONER}.group_snapshot.get", body, secrets, context))

    @rpc
    async def GetVolumeGroupSnapshot(self, request: Any, context: Any) -> Any:
        required(request.group_snapshot_id, "group_snapshot_id")
        gs = await self._get(request.group_snapshot_id, dict(request.secrets), context)
        check_members(gs, request.snapshot_ids)
        return csi.GetVolumeGroupSnapshotResponse(group_snapshot=group_message(gs))

    @rpc
    async def DeleteVolumeGroupSnapshot(self, request: Any, context: Any) -> Any:
        required(request.group_snapshot_id, "group_snapshot_id")
        secrets = dict(request.secrets)
        with contextlib.suppress(NotFound):  # already gone: deleting is idempotent
            gs = await self._get(request.group_snapshot_id, secrets, context)
            check_members(gs, request.snapshot_ids)
            await self.cmd(f"{PROVISIONER}.group_snapshot.delete", {"id": gs.id}, secrets, context)
        return csi.DeleteVolumeGroupSnapshotResponse()

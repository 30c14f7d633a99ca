"""The CSI Controller service: every call becomes one or a few bus commands.

The provisioner and the attacher do the work and keep the state; this module only
translates, so that every call is as idempotent as the commands behind it (creates are
keyed by name, publishes by volume and node) and every error keeps its code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import Int64Value

from berth_csi import ZONE_KEY
from berth_csi import mapping as m
from berth_csi.errors import required, rpc
from berth_csi.pb import csi
from berth_csi.settings import CsiSettings
from berth_csi.tokens import PageTokens
from berth_shared.bus import Bus
from berth_shared.errors import (
    Aborted,
    AlreadyExists,
    BerthError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from berth_shared.messages.attacher import PREFIX as ATTACHER
from berth_shared.messages.attacher import AttachmentList
from berth_shared.messages.provisioner import (
    MAX_VOLUME_GIB,
    ClusterList,
    Quota,
    Snapshot,
    Volume,
)
from berth_shared.messages.provisioner import (
    PREFIX as PROVISIONER,
)

RPC = csi.ControllerServiceCapability.RPC.Type
CAPABILITIES = (
    RPC.CREATE_DELETE_VOLUME,
    RPC.PUBLISH_UNPUBLISH_VOLUME,
    RPC.LIST_VOLUMES,
    RPC.GET_CAPACITY,
    RPC.CREATE_DELETE_SNAPSHOT,
    RPC.LIST_SNAPSHOTS,
    RPC.CLONE_VOLUME,
    RPC.PUBLISH_READONLY,
    RPC.EXPAND_VOLUME,
    RPC.VOLUME_CONDITION,
    RPC.GET_VOLUME,
    RPC.LIST_VOLUMES_PUBLISHED_NODES,
    RPC.MODIFY_VOLUME,
)
PAGE = 1000


class Commands:
    """Bus commands with the caller's tenant token and a deadline inside the gRPC one."""

    def __init__(self, bus: Bus, settings: CsiSettings) -> None:
        self.bus = bus
        self.settings = settings

    def token(self, secrets: Mapping[str, str]) -> str:
        token = secrets.get(m.TOKEN_SECRET) or self.settings.tenant_token()
        if not token:
            raise Unauthenticated(
                f"no Berth token: pass secrets.{m.TOKEN_SECRET} (StorageClass secret) or configure a default token"
            )
        return token

    def timeout(self, context: Any) -> float:
        limit = self.settings.command_timeout_s
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:
            # Leave time to answer with the command's own error before the caller gives up.
            limit = min(limit, max(1.0, remaining - 0.5))
        return float(limit)

    async def __call__(
        self, verb: str, body: dict[str, Any], secrets: Mapping[str, str], context: Any, key: str | None = None
    ) -> dict[str, Any]:
        return await self.bus.request(
            verb, body, token=self.token(secrets), idempotency_key=key, timeout=self.timeout(context)
        )


def volume_message(vol: Volume, source: Any | None = None) -> Any:
    out = csi.Volume(
        capacity_bytes=vol.size_gib * m.GIB,
        volume_id=vol.id,
        volume_context={"type": vol.volume_type, "zone": vol.zone},
        accessible_topology=[m.topology(vol.zone)],
    )
    if source is not None:
        out.content_source.CopyFrom(source)
    elif vol.source_snapshot_id:
        out.content_source.snapshot.snapshot_id = vol.source_snapshot_id
    elif vol.source_volume_id:
        out.content_source.volume.volume_id = vol.source_volume_id
    return out


def snapshot_message(snap: Snapshot) -> Any:
    created = Timestamp()
    created.FromDatetime(snap.created_at)
    return csi.Snapshot(
        size_bytes=snap.size_gib * m.GIB,
        snapshot_id=snap.id,
        source_volume_id=snap.volume_id,
        creation_time=created,
        ready_to_use=snap.status == "available",
        group_snapshot_id=snap.group_snapshot_id or "",
    )


def settled(vol: Volume) -> Volume:
    if vol.status in ("creating", "expanding", "deleting"):
        raise Aborted(f"volume {vol.id} is {vol.status}; retry the same request to follow it")
    if vol.status == "error":
        raise Internal(f"volume {vol.id} is in error; see the provisioner")
    return vol


def condition(vol: Volume) -> Any:
    if vol.status == "error":
        return csi.VolumeCondition(abnormal=True, message=f"volume {vol.id} is in error")
    return csi.VolumeCondition(abnormal=False, message=vol.status)


class ControllerService:
    def __init__(self, bus: Bus, settings: CsiSettings) -> None:
        self.cmd = Commands(bus, settings)
        self.settings = settings
        self.tokens = PageTokens()

    # -- volumes ---------------------------------------------------------------

    @rpc
    async def CreateVolume(self, request: Any, context: Any) -> Any:
        required(request.name, "name")
        # MULTI_NODE_MULTI_WRITER mounts: the type's backend is unknown here; the attacher
        # refuses the mode at publish unless the volume is on CephFS.
        m.check_capabilities(request.volume_capabilities, shared_fs=True)
        params = dict(request.parameters)
        mutable = dict(request.mutable_parameters)
        secrets = dict(request.secrets)
        m.check_parameters(params)
        m.check_parameters(mutable, m.MUTABLE_PARAMETERS, "mutable_parameters")
        # A VolumeAttributesClass given at create wins over the StorageClass.
        volume_type = mutable.get("type") or params.get("type", "standard")
        body: dict[str, Any] = {"name": m.resource_name(request.name), "volume_type": volume_type}
        source = request.volume_content_source if request.HasField("volume_content_source") else None
        source_gib = await self._source(source, body, secrets, context) if source is not None else None
        size = m.size_gib(request.capacity_range) if request.HasField("capacity_range") else None
        body["size_gib"] = size or source_gib or m.DEFAULT_SIZE_GIB
        requirement = request.accessibility_requirements if request.HasField("accessibility_requirements") else None
        candidates = m.zones(params, requirement)
        for i, zone in enumerate(candidates):
            try:
                data = await self.cmd(
                    f"{PROVISIONER}.volume.create", body | {"zone": zone}, secrets, context, request.name
                )
                break
            except (AlreadyExists, ResourceExhausted) as exc:
                # Another zone may still take it (or already hold it, on a retry).
                if i == len(candidates) - 1 or exc.reason == "quota_exceeded":
                    raise
        vol = settled(Volume.model_validate(data))
        return csi.CreateVolumeResponse(volume=volume_message(vol, source))

    async def _source(self, source: Any, body: dict[str, Any], secrets: dict[str, str], context: Any) -> int:
        """Fill the source ids in `body`; return the source's size in GiB."""
        kind = source.WhichOneof("type")
        if kind == "snapshot":
            sid = source.snapshot.snapshot_id
            required(sid, "volume_content_source.snapshot.snapshot_id")
            if not m.valid_id(sid):
                raise NotFound(f"snapshot {sid!r} not found")
            snap = Snapshot.model_validate(await self.cmd(f"{PROVISIONER}.snapshot.get", {"id": sid}, secrets, context))
            body["source_snapshot_id"] = sid
            return snap.size_gib
        if kind == "volume":
            vid = source.volume.volume_id
            required(vid, "volume_content_source.volume.volume_id")
            if not m.valid_id(vid):
                raise NotFound(f"volume {vid!r} not found")
            vol = Volume.model_validate(await self.cmd(f"{PROVISIONER}.volume.get", {"id": vid}, secrets, context))
            body["source_volume_id"] = vid
            return vol.size_gib
        raise InvalidArgument("volume_content_source: give a snapshot or a volume", field="volume_content_source")

    @rpc
    async def DeleteVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        secrets = dict(request.secrets)
        if m.valid_id(request.volume_id):
            holders = await self._holders(request.volume_id, secrets, context)
            if holders:
                raise FailedPrecondition(
                    f"volume {request.volume_id} is published to {', '.join(holders)}; unpublish it first",
                    holder=holders[0],
                )
            with contextlib.suppress(NotFound):  # already gone: deleting is idempotent
                await self.cmd(f"{PROVISIONER}.volume.delete", {"id": request.volume_id}, secrets, context)
        return csi.DeleteVolumeResponse()

    async def _holders(self, volume_id: str, secrets: Mapping[str, str], context: Any) -> list[str]:
        data = await self.cmd(f"{ATTACHER}.attachment.list", {"volume_id": volume_id}, secrets, context)
        return [a.node_id for a in AttachmentList.model_validate(data).items if a.state == "attached"]

    async def _get(self, volume_id: str, secrets: Mapping[str, str], context: Any) -> Volume:
        if not m.valid_id(volume_id):
            raise NotFound(f"volume {volume_id!r} not found", reason="volume_not_found")
        return Volume.model_validate(await self.cmd(f"{PROVISIONER}.volume.get", {"id": volume_id}, secrets, context))

    @rpc
    async def ControllerPublishVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(request.node_id, "node_id")
        required(request.HasField("volume_capability"), "volume_capability")
        m.check_capability(request.volume_capability, shared_fs=True)  # the attacher checks the backend
        if not m.valid_id(request.volume_id):
            raise NotFound(f"volume {request.volume_id!r} not found", reason="volume_not_found")
        cap = request.volume_capability
        body = {
            "volume_id": request.volume_id,
            "node_id": request.node_id,
            "access_mode": m.access_mode(cap),
            "readonly": bool(request.readonly) or int(cap.access_mode.mode) in m.READ_ONLY_MODES,
        }
        key = f"{request.volume_id}:{request.node_id}"
        data = await self.cmd(f"{ATTACHER}.volume.publish", body, dict(request.secrets), context, key)
        context_out = {str(k): str(v) for k, v in data.get("publish_context", {}).items()}
        return csi.ControllerPublishVolumeResponse(publish_context=context_out)

    @rpc
    async def ControllerUnpublishVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        secrets = dict(request.secrets)
        if not m.valid_id(request.volume_id):
            return csi.ControllerUnpublishVolumeResponse()  # names nothing: nothing is published
        nodes = (
            [request.node_id] if request.node_id else await self._published_nodes(request.volume_id, secrets, context)
        )
        for node_id in nodes:
            try:
                body = {"volume_id": request.volume_id, "node_id": node_id}
                await self.cmd(f"{ATTACHER}.volume.unpublish", body, secrets, context, f"{request.volume_id}:{node_id}")
            except NotFound:
                pass  # the volume or node is gone: it is unpublished
        return csi.ControllerUnpublishVolumeResponse()

    async def _published_nodes(self, volume_id: str, secrets: Mapping[str, str], context: Any) -> list[str]:
        data = await self.cmd(f"{ATTACHER}.attachment.list", {"volume_id": volume_id}, secrets, context)
        return sorted({a.node_id for a in AttachmentList.model_validate(data).items})

    @rpc
    async def ValidateVolumeCapabilities(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(len(request.volume_capabilities), "volume_capabilities")
        vol = await self._get(request.volume_id, dict(request.secrets), context)
        problems = [
            f"volume_capabilities[{i}]: {why}"
            for i, c in enumerate(request.volume_capabilities)
            if (why := m.unsupported(c))
        ]
        params = dict(request.parameters)
        unknown = sorted(k for k in params if k not in m.VOLUME_PARAMETERS and not k.startswith(m.CO_PREFIX))
        if unknown:
            problems.append(f"parameters: unknown key(s) {', '.join(unknown)}")
        if params.get("type", vol.volume_type) != vol.volume_type:
            problems.append(f"parameters.type: the volume is of type {vol.volume_type}")
        if params.get("zone", vol.zone) != vol.zone:
            problems.append(f"parameters.zone: the volume is in zone {vol.zone}")
        if problems:
            return csi.ValidateVolumeCapabilitiesResponse(message="; ".join(problems))
        confirmed = csi.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=dict(request.volume_context),
            volume_capabilities=list(request.volume_capabilities),
            parameters=params,
        )
        return csi.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @rpc
    async def ListVolumes(self, request: Any, context: Any) -> Any:
        if request.max_entries < 0:
            raise InvalidArgument("max_entries must not be negative", field="max_entries")
        token = self.tokens.position("volumes", request.starting_token)
        items, next_token = await self._pages(f"{PROVISIONER}.volume.list", {}, request.max_entries, token, {}, context)
        atts = AttachmentList.model_validate(await self.cmd(f"{ATTACHER}.attachment.list", {}, {}, context)).items
        nodes: dict[str, list[str]] = {}
        for a in atts:
            if a.state == "attached":
                nodes.setdefault(a.volume_id, []).append(a.node_id)
        entries = []
        for raw in items:
            vol = Volume.model_validate(raw)
            status = csi.ListVolumesResponse.VolumeStatus(
                published_node_ids=sorted(nodes.get(vol.id, [])), volume_condition=condition(vol)
            )
            entries.append(csi.ListVolumesResponse.Entry(volume=volume_message(vol), status=status))
        return csi.ListVolumesResponse(entries=entries, next_token=self.tokens.issue("volumes", next_token))

    async def _pages(
        self,
        verb: str,
        query: dict[str, Any],
        max_entries: int,
        token: str | None,
        secrets: Mapping[str, str],
        context: Any,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of max_entries, or every page when max_entries is 0 (CSI: return all)."""
        items: list[dict[str, Any]] = []
        while True:
            limit = min(PAGE, max_entries - len(items)) if max_entries else PAGE
            body = query | {"limit": limit} | ({"starting_token": token} if token else {})
            data = await self.cmd(verb, body, secrets, context)
            items += data["items"]
            token = data.get("next_token")
            if not token or (max_entries and len(items) >= max_entries):
                return items, token

    @rpc
    async def GetCapacity(self, request: Any, context: Any) -> Any:
        params = dict(request.parameters)
        m.check_parameters(params)
        for i, cap in enumerate(request.volume_capabilities):
            m.check_capability(cap, f"volume_capabilities[{i}]")
        quota = Quota.model_validate(await self.cmd(f"{PROVISIONER}.quota.get", {}, {}, context))
        available = max(0, quota.gigabytes - quota.used_gigabytes)
        zone = params.get("zone")
        if request.HasField("accessible_topology"):
            zone = request.accessible_topology.segments.get(ZONE_KEY, zone)
        room = await self._cluster_room(params.get("type", "standard"), zone, context)
        if room is not None:
            available = min(available, room)
        return csi.GetCapacityResponse(
            available_capacity=available * m.GIB,
            maximum_volume_size=Int64Value(value=min(MAX_VOLUME_GIB, max(available, 0)) * m.GIB),
            minimum_volume_size=Int64Value(value=m.GIB),
        )

    async def _cluster_room(self, volume_type: str, zone: str | None, context: Any) -> int | None:
        """GiB the active clusters of this type (and zone) still accept; None if the adapter
        may not see clusters (that needs the admin role: the node token's, when it has it)."""
        try:
            token = self.settings.heartbeat_token()
            data = await self.cmd.bus.request(
                f"{PROVISIONER}.cluster.list", {}, token=token, timeout=self.cmd.timeout(context)
            )
        except (BerthError, ValueError, OSError):
            return None
        room = 0
        for c in ClusterList.model_validate(data).items:
            if c.state == "active" and volume_type in c.volume_types and (zone is None or c.zone == zone):
                room += max(0, int(c.capacity_gib * c.overcommit_ratio) - c.provisioned_gib)
        return room

    @rpc
    async def ControllerGetCapabilities(self, request: Any, context: Any) -> Any:
        caps = [csi.ControllerServiceCapability(rpc=csi.ControllerServiceCapability.RPC(type=t)) for t in CAPABILITIES]
        return csi.ControllerGetCapabilitiesResponse(capabilities=caps)

    @rpc
    async def ControllerExpandVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(request.HasField("capacity_range"), "capacity_range")
        size = m.size_gib(request.capacity_range)
        if size is None:
            raise InvalidArgument("capacity_range.required_bytes is required", field="capacity_range.required_bytes")
        secrets = dict(request.secrets)
        vol = await self._get(request.volume_id, secrets, context)
        if vol.size_gib < size:
            body = {"id": vol.id, "size_gib": size}
            key = f"{vol.id}:expand:{size}"
            vol = Volume.model_validate(await self.cmd(f"{PROVISIONER}.volume.expand", body, secrets, context, key))
        settled(vol)
        block = request.HasField("volume_capability") and m.is_block(request.volume_capability)
        return csi.ControllerExpandVolumeResponse(
            capacity_bytes=vol.size_gib * m.GIB, node_expansion_required=not block
        )

    @rpc
    async def ControllerModifyVolume(self, request: Any, context: Any) -> Any:
        """A VolumeAttributesClass's parameters applied in place: `type` moves the volume to
        that volume type on its own cluster (the provisioner's retype; the watcher applies
        the type's IO limits on its event). Idempotent: the type it has is a no-op."""
        required(request.volume_id, "volume_id")
        mutable = dict(request.mutable_parameters)
        required(mutable, "mutable_parameters")
        m.check_parameters(mutable, m.MUTABLE_PARAMETERS, "mutable_parameters")
        if not m.valid_id(request.volume_id):
            raise NotFound(f"volume {request.volume_id!r} not found", reason="volume_not_found")
        if "type" in mutable:
            required(mutable["type"], "mutable_parameters.type")
            body = {"id": request.volume_id, "volume_type": mutable["type"]}
            key = f"{request.volume_id}:retype:{mutable['type']}"
            await self.cmd(f"{PROVISIONER}.volume.retype", body, dict(request.secrets), context, key)
        return csi.ControllerModifyVolumeResponse()

    @rpc
    async def ControllerGetVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        vol = await self._get(request.volume_id, {}, context)
        status = csi.ControllerGetVolumeResponse.VolumeStatus(
            published_node_ids=await self._holders(vol.id, {}, context), volume_condition=condition(vol)
        )
        return csi.ControllerGetVolumeResponse(volume=volume_message(vol), status=status)

    # -- snapshots ---------------------------------------------------------------

    @rpc
    async def CreateSnapshot(self, request: Any, context: Any) -> Any:
        required(request.source_volume_id, "source_volume_id")
        required(request.name, "name")
        if not m.valid_id(request.source_volume_id):
            raise NotFound(f"volume {request.source_volume_id!r} not found", reason="volume_not_found")
        body = {"name": m.resource_name(request.name), "volume_id": request.source_volume_id}
        data = await self.cmd(f"{PROVISIONER}.snapshot.create", body, dict(request.secrets), context, request.name)
        snap = Snapshot.model_validate(data)
        if snap.status == "error":
            raise Internal(f"snapshot {snap.id} is in error; see the provisioner")
        return csi.CreateSnapshotResponse(snapshot=snapshot_message(snap))

    @rpc
    async def DeleteSnapshot(self, request: Any, context: Any) -> Any:
        required(request.snapshot_id, "snapshot_id")
        if m.valid_id(request.snapshot_id):
            with contextlib.suppress(NotFound):
                body = {"id": request.snapshot_id}
                await self.cmd(f"{PROVISIONER}.snapshot.delete", body, dict(request.secrets), context)
        return csi.DeleteSnapshotResponse()

    @rpc
    async def ListSnapshots(self, request: Any, context: Any) -> Any:
        if request.max_entries < 0:
            raise InvalidArgument("max_entries must not be negative", field="max_entries")
        secrets = dict(request.secrets)
        source = request.source_volume_id
        scope = f"snapshots:{source}"
        token = self.tokens.position(scope, request.starting_token)
        if request.snapshot_id:
            snaps = await self._one_snapshot(request.snapshot_id, secrets, context)
            if source:
                snaps = [s for s in snaps if s.volume_id == source]
            return csi.ListSnapshotsResponse(entries=[_entry(s) for s in snaps])
        if source and not m.valid_id(source):
            return csi.ListSnapshotsResponse()
        query = {"volume_id": source} if source else {}
        items, next_token = await self._pages(
            f"{PROVISIONER}.snapshot.list", query, request.max_entries, token, secrets, context
        )
        entries = [_entry(Snapshot.model_validate(raw)) for raw in items]
        return csi.ListSnapshotsResponse(entries=entries, next_token=self.tokens.issue(scope, next_token))

    async def _one_snapshot(self, snapshot_id: str, secrets: Mapping[str, str], context: Any) -> list[Snapshot]:
        if not m.valid_id(snapshot_id):
            return []
        try:
            data = await self.cmd(f"{PROVISIONER}.snapshot.get", {"id": snapshot_id}, secrets, context)
        except NotFound:
            return []
        return [Snapshot.model_validate(data)]


def _entry(snap: Snapshot) -> Any:
    return csi.ListSnapshotsResponse.Entry(snapshot=snapshot_message(snap))

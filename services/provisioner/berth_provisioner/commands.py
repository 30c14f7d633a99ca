"""Bus commands `berth.provisioner.<noun>.<verb>`: the same use cases as the HTTP API."""

from __future__ import annotations

from berth_provisioner.service import Provisioner
from berth_shared.bus import CommandContext, CommandServer
from berth_shared.messages.common import ById, InventoryPage, ListQuery
from berth_shared.messages.provisioner import (
    PREFIX,
    Cluster,
    ClusterBackendList,
    ClusterList,
    ClusterRegister,
    ClusterUpdate,
    Empty,
    GroupSnapshot,
    GroupSnapshotCreate,
    GroupSnapshotList,
    NoArgs,
    Quota,
    QuotaGet,
    QuotaSet,
    Snapshot,
    SnapshotCreate,
    SnapshotList,
    SnapshotListQuery,
    Volume,
    VolumeCreate,
    VolumeExpand,
    VolumeList,
    VolumeLocation,
    VolumeRetype,
    VolumeType,
    VolumeTypeCreate,
    VolumeTypeList,
)


def register_commands(server: CommandServer, svc: Provisioner) -> None:
    @server.command(f"{PREFIX}.volume.create", VolumeCreate)
    async def volume_create(req: VolumeCreate, ctx: CommandContext) -> Volume:
        return await svc.volumes.create(ctx.principal, req, ctx.remaining_s())

    @server.command(f"{PREFIX}.volume.get", ById)
    async def volume_get(req: ById, ctx: CommandContext) -> Volume:
        return await svc.volumes.get(ctx.principal, req.id)

    @server.command(f"{PREFIX}.volume.list", ListQuery)
    async def volume_list(req: ListQuery, ctx: CommandContext) -> VolumeList:
        return await svc.volumes.list(ctx.principal, req)

    @server.command(f"{PREFIX}.volume.expand", VolumeExpand)
    async def volume_expand(req: VolumeExpand, ctx: CommandContext) -> Volume:
        return await svc.volumes.expand(ctx.principal, req.id, req.size_gib, ctx.remaining_s())

    @server.command(f"{PREFIX}.volume.retype", VolumeRetype)
    async def volume_retype(req: VolumeRetype, ctx: CommandContext) -> Volume:
        return await svc.volumes.retype(ctx.principal, req.id, req.volume_type)

    @server.command(f"{PREFIX}.volume.delete", ById)
    async def volume_delete(req: ById, ctx: CommandContext) -> Empty:
        await svc.volumes.delete(ctx.principal, req.id, ctx.remaining_s())
        return Empty()

    @server.command(f"{PREFIX}.volume.locate", ById)
    async def volume_locate(req: ById, ctx: CommandContext) -> VolumeLocation:
        return await svc.volumes.locate(ctx.principal, req.id)

    @server.command(f"{PREFIX}.snapshot.create", SnapshotCreate)
    async def snapshot_create(req: SnapshotCreate, ctx: CommandContext) -> Snapshot:
        return await svc.snapshots.create(ctx.principal, req, ctx.remaining_s())

    @server.command(f"{PREFIX}.snapshot.get", ById)
    async def snapshot_get(req: ById, ctx: CommandContext) -> Snapshot:
        return await svc.snapshots.get(ctx.principal, req.id)

    @server.command(f"{PREFIX}.snapshot.list", SnapshotListQuery)
    async def snapshot_list(req: SnapshotListQuery, ctx: CommandContext) -> SnapshotList:
        return await svc.snapshots.list(ctx.principal, req)

    @server.command(f"{PREFIX}.snapshot.delete", ById)
    async def snapshot_delete(req: ById, ctx: CommandContext) -> Empty:
        await svc.snapshots.delete(ctx.principal, req.id, ctx.remaining_s())
        return Empty()

    @server.command(f"{PREFIX}.group_snapshot.create", GroupSnapshotCreate)
    async def group_snapshot_create(req: GroupSnapshotCreate, ctx: CommandContext) -> GroupSnapshot:
        return await svc.group_snapshots.create(ctx.principal, req, ctx.remaining_s())

    @server.command(f"{PREFIX}.group_snapshot.get", ById)
    async def group_snapshot_get(req: ById, ctx: CommandContext) -> GroupSnapshot:
        return await svc.group_snapshots.get(ctx.principal, req.id)

    @server.command(f"{PREFIX}.group_snapshot.list", ListQuery)
    async def group_snapshot_list(req: ListQuery, ctx: CommandContext) -> GroupSnapshotList:
        return await svc.group_snapshots.list(ctx.principal, req)

    @server.command(f"{PREFIX}.group_snapshot.delete", ById)
    async def group_snapshot_delete(req: ById, ctx: CommandContext) -> Empty:
        await svc.group_snapshots.delete(ctx.principal, req.id, ctx.remaining_s())
        return Empty()

    @server.command(f"{PREFIX}.cluster.register", ClusterRegister)
    async def cluster_register(req: ClusterRegister, ctx: CommandContext) -> Cluster:
        return await svc.clusters.register(ctx.principal, req)

    @server.command(f"{PREFIX}.cluster.update", ClusterUpdate)
    async def cluster_update(req: ClusterUpdate, ctx: CommandContext) -> Cluster:
        return await svc.clusters.update(ctx.principal, req)

    @server.command(f"{PREFIX}.cluster.list", NoArgs)
    async def cluster_list(req: NoArgs, ctx: CommandContext) -> ClusterList:
        return await svc.clusters.list(ctx.principal)

    @server.command(f"{PREFIX}.type.create", VolumeTypeCreate)
    async def type_create(req: VolumeTypeCreate, ctx: CommandContext) -> VolumeType:
        return await svc.volume_types.create(ctx.principal, req)

    @server.command(f"{PREFIX}.type.list", NoArgs)
    async def type_list(req: NoArgs, ctx: CommandContext) -> VolumeTypeList:
        return await svc.volume_types.list()

    @server.command(f"{PREFIX}.quota.set", QuotaSet)
    async def quota_set(req: QuotaSet, ctx: CommandContext) -> Quota:
        return await svc.quotas.set(ctx.principal, req)

    @server.command(f"{PREFIX}.quota.get", QuotaGet)
    async def quota_get(req: QuotaGet, ctx: CommandContext) -> Quota:
        return await svc.quotas.get(ctx.principal, req.tenant)

    # The watcher's sources: every tenant's records, paged by id (admin only).
    @server.command(f"{PREFIX}.inventory.volumes", InventoryPage)
    async def inventory_volumes(req: InventoryPage, ctx: CommandContext) -> VolumeList:
        return await svc.volumes.inventory(ctx.principal, req)

    @server.command(f"{PREFIX}.inventory.snapshots", InventoryPage)
    async def inventory_snapshots(req: InventoryPage, ctx: CommandContext) -> SnapshotList:
        return await svc.snapshots.inventory(ctx.principal, req)

    @server.command(f"{PREFIX}.inventory.clusters", NoArgs)
    async def inventory_clusters(req: NoArgs, ctx: CommandContext) -> ClusterBackendList:
        return await svc.clusters.inventory(ctx.principal)

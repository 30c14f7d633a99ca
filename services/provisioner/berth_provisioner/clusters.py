"""Storage clusters (admin): register, change, list; and the embedded default's one file
cluster. Placement over them is in placement.py, their room in repo/accounting.py."""

from __future__ import annotations

from berth_provisioner import repo
from berth_provisioner.context import Context
from berth_provisioner.volume_types import require_known
from berth_shared.auth import Principal
from berth_shared.backends import validate_backend_config
from berth_shared.bus import SYSTEM_TENANT
from berth_shared.errors import AlreadyExists, NotFound
from berth_shared.ids import new_id
from berth_shared.messages.provisioner import (
    Cluster,
    ClusterBackend,
    ClusterBackendList,
    ClusterList,
    ClusterRegister,
    ClusterUpdate,
)


class Clusters:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def register(self, p: Principal, req: ClusterRegister) -> Cluster:
        p.require_admin()
        config = validate_backend_config(req.backend, req.config)
        cluster_id = new_id("cl")
        async with self.ctx.db.transaction() as s:
            await require_known(s, req.volume_types)
            existing = await repo.clusters.by_name(s, req.name)
            if existing is not None:
                raise AlreadyExists(f"a cluster named {req.name!r} is already registered", cluster_id=existing.id)
            await repo.clusters.insert(
                s,
                id=cluster_id,
                name=req.name,
                backend=req.backend,
                config=config,
                volume_types=list(req.volume_types),
                zone=req.zone,
                capacity_gib=req.capacity_gib,
                overcommit_ratio=req.overcommit_ratio,
                free_floor_pct=req.free_floor_pct,
                state=req.state,
                allowed_tenants=req.allowed_tenants,
            )
            row = await repo.clusters.by_id(s, cluster_id)
            assert row is not None
            out = repo.clusters.out(row)
            await self.ctx.events.emit(
                s, SYSTEM_TENANT, "cluster", "registered", cluster_id, out.model_dump(mode="json")
            )
        self.ctx.events.notify()
        return out

    async def update(self, p: Principal, req: ClusterUpdate) -> Cluster:
        p.require_admin()
        changes = req.model_dump(exclude={"id"}, exclude_unset=True)
        async with self.ctx.db.transaction() as s:
            if "volume_types" in changes:
                await require_known(s, changes["volume_types"])
            if changes and not await repo.clusters.change(s, req.id, **changes):
                raise NotFound(f"cluster {req.id} not found", reason="cluster_not_found")
            row = await repo.clusters.by_id(s, req.id)
            if row is None:
                raise NotFound(f"cluster {req.id} not found", reason="cluster_not_found")
            out = repo.clusters.out(row)
            if changes:
                await self.ctx.events.emit(s, SYSTEM_TENANT, "cluster", "updated", req.id, out.model_dump(mode="json"))
        self.ctx.events.notify()
        return out

    async def list(self, p: Principal) -> ClusterList:
        p.require_admin()
        async with self.ctx.db.sessions() as s:
            rows = await repo.clusters.all_rows(s)
        items = []
        for r in rows:
            cap = await self.ctx.capacity_of(r)
            items.append(repo.clusters.out(r, cap.total_bytes, cap.free_bytes) if cap else repo.clusters.out(r))
        return ClusterList(items=items)

    async def inventory(self, p: Principal) -> ClusterBackendList:
        """Every cluster with its backend config: what the watcher scans each one with.
        Without the backends' live figures (the watcher reads its own)."""
        p.require_admin()
        async with self.ctx.db.sessions() as s:
            rows = await repo.clusters.all_rows(s)
        return ClusterBackendList(
            items=[ClusterBackend(**repo.clusters.out(r).model_dump(), config=dict(r.config)) for r in rows]
        )

    async def bootstrap_file_cluster(self, root: str) -> None:
        """Embedded default: one volume type and one file cluster, registered once."""
        async with self.ctx.db.transaction() as s:
            if await repo.clusters.count(s) > 0:
                return
            await repo.volume_types.insert(s, "standard", "thin file-backed volumes", if_missing=True)
            await repo.clusters.insert(
                s,
                id=new_id("cl"),
                name="local",
                backend="file",
                config={"root": root},
                volume_types=["standard"],
                zone="default",
                capacity_gib=1024,
                overcommit_ratio=4.0,
                free_floor_pct=5.0,
                state="active",
                allowed_tenants=None,
            )

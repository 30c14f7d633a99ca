"""The provisioner's use cases, shared by the HTTP API and the bus commands.

Each mutation is three steps: (1) one transaction that validates, reserves quota and
cluster capacity, writes the record in a transitional status and an operation row;
(2) the idempotent backend call; (3) one transaction that commits the final status with
its event in the outbox. A crash anywhere leaves an operation row that is resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import repo
from berth_provisioner import tables as t
from berth_provisioner.capacity import CapacityCache
from berth_provisioner.operations import OperationRunner, new_id, now
from berth_provisioner.placement import NoValidCluster, PlacementRequest, rank
from berth_shared.auth import Principal
from berth_shared.backends import Backend, BackendError, Capacity, build_backend, validate_backend_config
from berth_shared.bus.envelope import SYSTEM_TENANT
from berth_shared.db import BusTables, Database, affected
from berth_shared.db.outbox import EventWriter, OutboxRelay
from berth_shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from berth_shared.faults import checkpoint
from berth_shared.messages.common import ListQuery
from berth_shared.messages.provisioner import (
    Cluster,
    ClusterList,
    ClusterRegister,
    ClusterUpdate,
    Quota,
    QuotaSet,
    Snapshot,
    SnapshotCreate,
    SnapshotList,
    SnapshotListQuery,
    Volume,
    VolumeCreate,
    VolumeList,
    VolumeLocation,
    VolumeType,
    VolumeTypeCreate,
    VolumeTypeList,
)

log = logging.getLogger(__name__)
GIB = 1024**3
SERVICE = "provisioner"


@dataclass(frozen=True)
class Started:
    """A create recorded with its operation, ready to run."""

    volume_id: str
    op: dict[str, Any]


class Provisioner:
    def __init__(
        self,
        db: Database,
        tables: BusTables,
        relay: OutboxRelay | None,
        runner: OperationRunner,
        *,
        default_quota_volumes: int,
        default_quota_gigabytes: int,
    ) -> None:
        self.db = db
        self.tables = tables
        self.relay = relay
        self.events = EventWriter(SERVICE, tables, relay)
        self.runner = runner
        self.default_quota = (default_quota_volumes, default_quota_gigabytes)
        self._backends: dict[str, Backend] = {}
        self._capacity = CapacityCache()
        runner.register("volume.create", self._op_create_do, self._op_create_finish, self._op_create_fail)
        runner.register("volume.delete", self._op_delete_do, self._op_delete_finish, self._op_delete_fail)
        runner.register("volume.expand", self._op_expand_do, self._op_expand_finish, self._op_expand_fail)
        runner.register("snapshot.create", self._op_snap_do, self._op_snap_finish, self._op_snap_fail)
        runner.register("snapshot.delete", self._op_snapdel_do, self._op_snapdel_finish, self._op_snapdel_fail)

    # -- plumbing --------------------------------------------------------------

    async def backend_for(self, cluster_id: str) -> Backend:
        backend = self._backends.get(cluster_id)
        if backend is None:
            async with self.db.sessions() as s:
                row = (await s.execute(select(t.clusters).where(t.clusters.c.id == cluster_id))).one()
            backend = self._backend_of(row)
        return backend

    async def close(self) -> None:
        """Drop the backends' connections (Ceph: each holds a librados client)."""
        await self._capacity.close()
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            close = getattr(backend, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:
                    log.warning("closing a %s backend: %s", backend.kind, exc)

    def _backend_of(self, row: Row[Any]) -> Backend:
        """The backend for a cluster row (no DB access: safe inside a transaction)."""
        backend = self._backends.get(row.id)
        if backend is None:
            backend = build_backend(row.backend, row.config)
            self._backends[row.id] = backend
        return backend

    # -- volumes ---------------------------------------------------------------

    async def create_volume(self, p: Principal, req: VolumeCreate, wait_s: float) -> Volume:
        try:
            started = await self._start_create(p, req)
        except IntegrityError:
            # A concurrent create with the same name won the race: answer as a replay.
            async with self.db.sessions() as s:
                existing = await repo.volume_by_name(s, p.tenant, req.name)
            if existing is None:
                raise
            return await self._replay_create(existing, req, wait_s)
        if not isinstance(started, Started):
            return await self._replay_create(started, req, wait_s)
        checkpoint("volume.create.after_record")
        self.runner.launch(started.op["id"], fresh=started.op)
        await self.runner.wait(started.op["id"], wait_s)
        return await self.get_volume(p, started.volume_id)

    async def _replay_create(self, row: Row[Any], req: VolumeCreate, wait_s: float) -> Volume:
        same = (
            row.size_gib == req.size_gib
            and row.volume_type == req.volume_type
            and (req.zone is None or row.zone == req.zone)
            and row.source_snapshot_id == req.source_snapshot_id
            and row.source_volume_id == req.source_volume_id
        )
        if not same:
            raise AlreadyExists(f"volume {req.name!r} already exists with a different specification", volume_id=row.id)
        if row.status == "creating":
            op_id = await self._pending_op(row.id, "volume.create")
            if op_id:
                self.runner.launch(op_id)
                await self.runner.wait(op_id, wait_s)
        async with self.db.sessions() as s:
            fresh = await repo.volume_by_id(s, row.tenant, row.id)
        if fresh is None:
            raise NotFound(f"volume {req.name!r} failed to create and was rolled back; retry")
        return repo.volume_out(fresh)

    async def _pending_op(self, resource_id: str, kind: str) -> str | None:
        async with self.db.sessions() as s:
            q = select(t.operations.c.id).where(
                t.operations.c.resource_id == resource_id,
                t.operations.c.kind == kind,
                t.operations.c.state == "pending",
            )
            return (await s.execute(q)).scalar()

    async def _start_create(self, p: Principal, req: VolumeCreate) -> Started | Row[Any]:
        """Record the volume and its operation in one transaction; or, when the name is
        taken, return the existing row so the caller answers as a replay."""
        volume_id = new_id("vol")
        async with self.db.transaction() as s:
            existing = await repo.volume_by_name(s, p.tenant, req.name)
            if existing is not None:
                return existing
            if (
                await s.execute(select(t.volume_types.c.name).where(t.volume_types.c.name == req.volume_type))
            ).first() is None:
                raise InvalidArgument(f"unknown volume type {req.volume_type!r}", reason="unknown_volume_type")
            pinned_cluster = await self._source_cluster(s, p, req)
            await self._reserve_quota(s, p.tenant, 1, req.size_gib)
            cluster = await self._place(s, p.tenant, req, pinned_cluster)
            await s.execute(
                t.volumes.insert().values(
                    id=volume_id,
                    tenant=p.tenant,
                    name=req.name,
                    size_gib=req.size_gib,
                    volume_type=req.volume_type,
                    zone=cluster.zone,
                    cluster_id=cluster.id,
                    status="creating",
                    source_snapshot_id=req.source_snapshot_id,
                    source_volume_id=req.source_volume_id,
                )
            )
            op = self.runner.values("volume.create", volume_id, p.tenant, {"volume_id": volume_id})
            await s.execute(t.operations.insert().values(**op))
        return Started(volume_id, op)

    async def _source_cluster(self, s: AsyncSession, p: Principal, req: VolumeCreate) -> str | None:
        if req.source_snapshot_id:
            snap = await repo.snapshot_by_id(s, p.tenant, req.source_snapshot_id)
            if snap is None:
                raise NotFound(f"snapshot {req.source_snapshot_id} not found", reason="snapshot_not_found")
            if snap.status != "available":
                raise FailedPrecondition(f"snapshot {snap.id} is {snap.status}", reason="snapshot_not_ready")
            if req.size_gib < snap.size_gib:
                raise OutOfRange(f"size_gib must be at least the snapshot's {snap.size_gib} GiB")
            return str(snap.cluster_id)
        if req.source_volume_id:
            src = await repo.volume_by_id(s, p.tenant, req.source_volume_id)
            if src is None:
                raise NotFound(f"volume {req.source_volume_id} not found", reason="volume_not_found")
            if src.status != "available":
                raise FailedPrecondition(f"volume {src.id} is {src.status}", reason="volume_not_ready")
            if req.size_gib < src.size_gib:
                raise OutOfRange(f"size_gib must be at least the source volume's {src.size_gib} GiB")
            return str(src.cluster_id)
        return None

    async def _reserve_quota(self, s: AsyncSession, tenant: str, volumes: int, gigabytes: int) -> None:
        q = t.quotas.c
        reserve = (
            update(t.quotas)
            .where(
                q.tenant == tenant,
                q.used_volumes + volumes <= q.volumes,
                q.used_gigabytes + gigabytes <= q.gigabytes,
            )
            .values(used_volumes=q.used_volumes + volumes, used_gigabytes=q.used_gigabytes + gigabytes)
        )
        res = await s.execute(reserve)
        if affected(res) != 1:
            # First use by this tenant: give it the default quota, then try once more.
            default = {
                "tenant": tenant,
                "volumes": self.default_quota[0],
                "gigabytes": self.default_quota[1],
                "used_volumes": 0,
                "used_gigabytes": 0,
            }
            await repo.insert_ignore(s, t.quotas, default)
            res = await s.execute(reserve)
        if affected(res) != 1:
            row = (await s.execute(select(t.quotas).where(q.tenant == tenant))).one()
            raise ResourceExhausted(
                f"quota exceeded for tenant {tenant}: {row.used_volumes}/{row.volumes} volumes, "
                f"{row.used_gigabytes}/{row.gigabytes} GiB in use, {volumes} volume(s) and {gigabytes} GiB asked",
                reason="quota_exceeded",
            )

    async def _release_quota(self, s: AsyncSession, tenant: str, volumes: int, gigabytes: int) -> None:
        q = t.quotas.c
        await s.execute(
            update(t.quotas)
            .where(q.tenant == tenant)
            .values(used_volumes=q.used_volumes - volumes, used_gigabytes=q.used_gigabytes - gigabytes)
        )

    async def _place(self, s: AsyncSession, tenant: str, req: VolumeCreate, pinned: str | None) -> Row[Any]:
        query = select(t.clusters)
        if pinned:
            query = query.where(t.clusters.c.id == pinned)
        rows = {r.id: r for r in (await s.execute(query)).all()}
        views = [repo.cluster_view(r, await self._free_fraction(r)) for r in rows.values()]
        preq = PlacementRequest(tenant=tenant, size_gib=req.size_gib, volume_type=req.volume_type, zone=req.zone)
        try:
            ranked = rank(views, preq)
        except NoValidCluster as exc:
            raise ResourceExhausted(
                str(exc), reason="no_valid_cluster", rejections=[r.__dict__ for r in exc.rejections]
            ) from exc
        c = t.clusters.c
        for view in ranked:
            # Conditional: concurrent creates cannot push a cluster past its limit.
            res = await s.execute(
                update(t.clusters)
                .where(
                    c.id == view.id,
                    c.state == "active",
                    c.provisioned_gib + req.size_gib <= c.capacity_gib * c.overcommit_ratio,
                )
                .values(provisioned_gib=c.provisioned_gib + req.size_gib, volume_count=c.volume_count + 1)
            )
            if affected(res) == 1:
                return rows[view.id]
        raise ResourceExhausted("storage clusters filled up while placing the volume; retry", reason="no_valid_cluster")

    async def _capacity_of(self, row: Row[Any]) -> Capacity | None:
        """The cluster's real capacity, cached and bounded (see capacity.py); None: unknown."""
        return await self._capacity.get(row.id, lambda: self._backend_of(row).capacity())

    async def _free_fraction(self, row: Row[Any]) -> float | None:
        cap = await self._capacity_of(row)
        return cap.free_bytes / cap.total_bytes if cap is not None and cap.total_bytes else None

    async def _op_create_do(self, op: dict[str, Any]) -> None:
        async with self.db.sessions() as s:
            vol = await repo.volume_by_id(s, None, op["params"]["volume_id"])
        if vol is None or vol.status != "creating":
            return
        backend = await self.backend_for(vol.cluster_id)
        size = vol.size_gib * GIB
        # The tenant goes along: CephFS keeps each tenant's volumes in its own subvolume group.
        if vol.source_snapshot_id:
            await backend.create_volume_from_snapshot(vol.id, vol.source_snapshot_id, size, tenant=vol.tenant)
        elif vol.source_volume_id:
            await backend.clone_volume(vol.id, vol.source_volume_id, size, tenant=vol.tenant)
        else:
            await backend.create_volume(vol.id, size, tenant=vol.tenant)
        checkpoint("volume.create.after_backend")

    async def _op_create_finish(self, op: dict[str, Any]) -> bool:
        async with self.db.transaction() as s:
            vid = op["params"]["volume_id"]
            res = await s.execute(
                update(t.volumes)
                .where(t.volumes.c.id == vid, t.volumes.c.status == "creating")
                .values(status="available", updated_at=now())
            )
            if affected(res) == 1:
                vol = await repo.volume_by_id(s, None, vid)
                assert vol is not None
                await self.events.emit(
                    s, vol.tenant, "volume", "created", vol.id, repo.volume_out(vol).model_dump(mode="json")
                )
            await self.runner.mark_done(s, op["id"])
        self.events.notify()
        return True

    async def _op_create_fail(self, op: dict[str, Any], why: str) -> None:
        """Roll back: remove whatever the backend made, the record, and the reservations."""
        vid = op["params"]["volume_id"]
        async with self.db.sessions() as s:
            vol = await repo.volume_by_id(s, None, vid)
        if vol is None or vol.status != "creating":
            return
        try:
            await (await self.backend_for(vol.cluster_id)).delete_volume(vid)
        except BackendError as exc:
            log.warning("rollback of %s could not remove its backend file (the watcher will): %s", vid, exc)
        async with self.db.transaction() as s:
            res = await s.execute(t.volumes.delete().where(t.volumes.c.id == vid, t.volumes.c.status == "creating"))
            if affected(res) == 1:
                await self._release(s, vol)
                data = repo.volume_out(vol).model_dump(mode="json") | {"status": "error", "error": why}
                await self.events.emit(s, vol.tenant, "volume", "create_failed", vid, data)
        self.events.notify()

    async def _release(self, s: AsyncSession, vol: Row[Any]) -> None:
        await self._release_quota(s, vol.tenant, 1, vol.size_gib)
        c = t.clusters.c
        await s.execute(
            update(t.clusters)
            .where(c.id == vol.cluster_id)
            .values(provisioned_gib=c.provisioned_gib - vol.size_gib, volume_count=c.volume_count - 1)
        )

    async def get_volume(self, p: Principal, volume_id: str) -> Volume:
        async with self.db.sessions() as s:
            row = await repo.volume_by_id(s, None if p.is_admin else p.tenant, volume_id)
        if row is None:
            raise NotFound(f"volume {volume_id} not found", reason="volume_not_found")
        return repo.volume_out(row)

    async def locate_volume(self, p: Principal, volume_id: str) -> VolumeLocation:
        """The volume with its cluster's backend kind and config: for services, not tenants."""
        p.require_admin()
        async with self.db.sessions() as s:
            row = await repo.volume_by_id(s, None, volume_id)
            if row is None:
                raise NotFound(f"volume {volume_id} not found", reason="volume_not_found")
            cluster = (await s.execute(select(t.clusters).where(t.clusters.c.id == row.cluster_id))).one()
        return VolumeLocation(volume=repo.volume_out(row), backend=cluster.backend, config=dict(cluster.config))

    async def list_volumes(self, p: Principal, q: ListQuery) -> VolumeList:
        tenant = q.tenant if (p.is_admin and q.tenant) else p.tenant
        v = t.volumes.c
        query = select(t.volumes).where(v.tenant == tenant).order_by(v.id).limit(q.limit + 1)
        if q.starting_token:
            query = query.where(v.id > q.starting_token)
        async with self.db.sessions() as s:
            rows = (await s.execute(query)).all()
        items = [repo.volume_out(r) for r in rows[: q.limit]]
        return VolumeList(items=items, next_token=items[-1].id if len(rows) > q.limit else None)

    async def delete_volume(self, p: Principal, volume_id: str, wait_s: float) -> None:
        op_id = await self._start_delete(p, volume_id)
        checkpoint("volume.delete.after_record")
        self.runner.launch(op_id)
        await self.runner.wait(op_id, wait_s)
        # A delete the backend refused (RBD: the image still has watchers) left the volume in
        # "error": say so, instead of a success for a volume that still exists.
        failure = await self.runner.failure(op_id)
        if failure is not None:
            raise failure

    async def _start_delete(self, p: Principal, volume_id: str) -> str:
        async with self.db.transaction() as s:
            vol = await repo.volume_by_id(s, p.tenant, volume_id)
            if vol is None:
                raise NotFound(f"volume {volume_id} not found", reason="volume_not_found")
            if vol.status == "deleting":
                op_id = await self._pending_op_in(s, volume_id, "volume.delete")
                if op_id:
                    return op_id
            if vol.status not in ("available", "error"):
                raise Aborted(f"volume {volume_id} is {vol.status}; retry once that finishes")
            res = await s.execute(
                update(t.volumes)
                .where(t.volumes.c.id == volume_id, t.volumes.c.status == vol.status)
                .values(status="deleting", updated_at=now())
            )
            if affected(res) != 1:
                raise Aborted(f"volume {volume_id} changed concurrently; retry")
            # Counted only once the row is ours: a snapshot that took the volume's lock
            # first (see _start_snapshot) has committed by now and is seen here.
            snaps = await s.execute(
                select(func.count()).select_from(t.snapshots).where(t.snapshots.c.volume_id == volume_id)
            )
            if snaps.scalar_one() > 0:
                raise FailedPrecondition(
                    f"volume {volume_id} has snapshots; delete them first", reason="volume_has_snapshots"
                )
            op = self.runner.values("volume.delete", volume_id, vol.tenant, {"volume_id": volume_id})
            await s.execute(t.operations.insert().values(**op))
            return str(op["id"])

    async def _pending_op_in(self, s: AsyncSession, resource_id: str, kind: str) -> str | None:
        q = select(t.operations.c.id).where(
            t.operations.c.resource_id == resource_id, t.operations.c.kind == kind, t.operations.c.state == "pending"
        )
        return (await s.execute(q)).scalar()

    async def _op_delete_do(self, op: dict[str, Any]) -> None:
        async with self.db.sessions() as s:
            vol = await repo.volume_by_id(s, None, op["params"]["volume_id"])
        if vol is None or vol.status != "deleting":
            return
        await (await self.backend_for(vol.cluster_id)).delete_volume(vol.id)
        checkpoint("volume.delete.after_backend")

    async def _op_delete_finish(self, op: dict[str, Any]) -> None:
        vid = op["params"]["volume_id"]
        async with self.db.transaction() as s:
            vol = await repo.volume_by_id(s, None, vid)
            if vol is None or vol.status != "deleting":
                return
            res = await s.execute(t.volumes.delete().where(t.volumes.c.id == vid, t.volumes.c.status == "deleting"))
            if affected(res) == 1:
                await self._release(s, vol)
                data = repo.volume_out(vol).model_dump(mode="json")
                await self.events.emit(s, vol.tenant, "volume", "deleted", vid, data)
        self.events.notify()

    async def _op_delete_fail(self, op: dict[str, Any], why: str) -> None:
        async with self.db.transaction() as s:
            await s.execute(
                update(t.volumes)
                .where(t.volumes.c.id == op["params"]["volume_id"], t.volumes.c.status == "deleting")
                .values(status="error", updated_at=now())
            )

    async def expand_volume(self, p: Principal, volume_id: str, size_gib: int, wait_s: float) -> Volume:
        op_id = await self._start_expand(p, volume_id, size_gib)
        if op_id:
            self.runner.launch(op_id)
            await self.runner.wait(op_id, wait_s)
        return await self.get_volume(p, volume_id)

    async def _start_expand(self, p: Principal, volume_id: str, size_gib: int) -> str | None:
        async with self.db.transaction() as s:
            vol = await repo.volume_by_id(s, p.tenant, volume_id)
            if vol is None:
                raise NotFound(f"volume {volume_id} not found", reason="volume_not_found")
            if vol.status == "expanding":
                op_id = await self._pending_op_in(s, volume_id, "volume.expand")
                if op_id and (await self._op_params(s, op_id))["size_gib"] == size_gib:
                    return op_id
                raise Aborted(f"volume {volume_id} is being expanded; retry once that finishes")
            if vol.status != "available":
                raise Aborted(f"volume {volume_id} is {vol.status}; retry once that finishes")
            if size_gib < vol.size_gib:
                raise OutOfRange(f"volumes only grow: {volume_id} has {vol.size_gib} GiB, asked {size_gib}")
            if size_gib == vol.size_gib:
                return None
            delta = size_gib - vol.size_gib
            # Claim the volume first and only from the state read above: on PostgreSQL two
            # concurrent expands both read "available", and an unconditional claim let both
            # reserve quota and cluster room while only one expand could ever release it.
            v = t.volumes.c
            res = await s.execute(
                update(t.volumes)
                .where(v.id == volume_id, v.status == "available", v.size_gib == vol.size_gib)
                .values(status="expanding", updated_at=now())
            )
            if affected(res) != 1:
                raise Aborted(f"volume {volume_id} changed concurrently; retry")
            await self._reserve_quota(s, vol.tenant, 0, delta)
            c = t.clusters.c
            res = await s.execute(
                update(t.clusters)
                .where(c.id == vol.cluster_id, c.provisioned_gib + delta <= c.capacity_gib * c.overcommit_ratio)
                .values(provisioned_gib=c.provisioned_gib + delta)
            )
            if affected(res) != 1:
                raise ResourceExhausted(
                    f"the volume's storage cluster has no room for {delta} GiB more", reason="cluster_full"
                )
            op = self.runner.values(
                "volume.expand",
                volume_id,
                vol.tenant,
                {"volume_id": volume_id, "size_gib": size_gib, "from_gib": vol.size_gib},
            )
            await s.execute(t.operations.insert().values(**op))
            return str(op["id"])

    async def _op_params(self, s: AsyncSession, op_id: str) -> dict[str, Any]:
        row = (await s.execute(select(t.operations.c.params).where(t.operations.c.id == op_id))).scalar_one()
        return dict(row)

    async def _op_expand_do(self, op: dict[str, Any]) -> None:
        async with self.db.sessions() as s:
            vol = await repo.volume_by_id(s, None, op["params"]["volume_id"])
        if vol is None or vol.status != "expanding":
            return
        await (await self.backend_for(vol.cluster_id)).expand_volume(vol.id, op["params"]["size_gib"] * GIB)

    async def _op_expand_finish(self, op: dict[str, Any]) -> None:
        vid = op["params"]["volume_id"]
        async with self.db.transaction() as s:
            res = await s.execute(
                update(t.volumes)
                .where(t.volumes.c.id == vid, t.volumes.c.status == "expanding")
                .values(status="available", size_gib=op["params"]["size_gib"], updated_at=now())
            )
            if affected(res) == 1:
                vol = await repo.volume_by_id(s, None, vid)
                assert vol is not None
                await self.events.emit(
                    s, vol.tenant, "volume", "expanded", vid, repo.volume_out(vol).model_dump(mode="json")
                )
        self.events.notify()

    async def _op_expand_fail(self, op: dict[str, Any], why: str) -> None:
        vid = op["params"]["volume_id"]
        delta = op["params"]["size_gib"] - op["params"]["from_gib"]
        async with self.db.transaction() as s:
            vol = await repo.volume_by_id(s, None, vid)
            res = await s.execute(
                update(t.volumes)
                .where(t.volumes.c.id == vid, t.volumes.c.status == "expanding")
                .values(status="available", updated_at=now())
            )
            if affected(res) == 1 and vol is not None:
                await self._release_quota(s, vol.tenant, 0, delta)
                c = t.clusters.c
                await s.execute(
                    update(t.clusters).where(c.id == vol.cluster_id).values(provisioned_gib=c.provisioned_gib - delta)
                )

    # -- snapshots -------------------------------------------------------------

    async def create_snapshot(self, p: Principal, req: SnapshotCreate, wait_s: float) -> Snapshot:
        async with self.db.sessions() as s:
            existing = await repo.snapshot_by_name(s, p.tenant, req.name)
        if existing is None:
            try:
                snap_id, op_id = await self._start_snapshot(p, req)
            except IntegrityError:
                async with self.db.sessions() as s:
                    existing = await repo.snapshot_by_name(s, p.tenant, req.name)
                if existing is None:
                    raise
            else:
                self.runner.launch(op_id)
                await self.runner.wait(op_id, wait_s)
                return await self.get_snapshot(p, snap_id)
        if existing.volume_id != req.volume_id:
            raise AlreadyExists(f"snapshot {req.name!r} already exists for another volume", snapshot_id=existing.id)
        if existing.status == "creating":
            pending = await self._pending_op(existing.id, "snapshot.create")
            if pending:
                self.runner.launch(pending)
                await self.runner.wait(pending, wait_s)
        return await self.get_snapshot(p, existing.id)

    async def _start_snapshot(self, p: Principal, req: SnapshotCreate) -> tuple[str, str]:
        snap_id = new_id("snap")
        async with self.db.transaction() as s:
            # Locked (PostgreSQL; SQLite serialises writers anyway) so that a concurrent
            # delete waits and then sees this snapshot, instead of both committing and the
            # snapshot outliving its volume.
            vol = await repo.volume_by_id(s, p.tenant, req.volume_id, lock=True)
            if vol is None:
                raise NotFound(f"volume {req.volume_id} not found", reason="volume_not_found")
            if vol.status != "available":
                raise Aborted(f"volume {vol.id} is {vol.status}; retry once that finishes")
            await s.execute(
                t.snapshots.insert().values(
                    id=snap_id,
                    tenant=p.tenant,
                    name=req.name,
                    volume_id=vol.id,
                    size_gib=vol.size_gib,
                    cluster_id=vol.cluster_id,
                    status="creating",
                )
            )
            op = self.runner.values("snapshot.create", snap_id, p.tenant, {"snapshot_id": snap_id})
            await s.execute(t.operations.insert().values(**op))
        return snap_id, str(op["id"])

    async def _op_snap_do(self, op: dict[str, Any]) -> None:
        async with self.db.sessions() as s:
            snap = await repo.snapshot_by_id(s, None, op["params"]["snapshot_id"])
        if snap is None or snap.status != "creating":
            return
        await (await self.backend_for(snap.cluster_id)).create_snapshot(snap.id, snap.volume_id)

    async def _op_snap_finish(self, op: dict[str, Any]) -> None:
        sid = op["params"]["snapshot_id"]
        async with self.db.transaction() as s:
            res = await s.execute(
                update(t.snapshots)
                .where(t.snapshots.c.id == sid, t.snapshots.c.status == "creating")
                .values(status="available", updated_at=now())
            )
            if affected(res) == 1:
                snap = await repo.snapshot_by_id(s, None, sid)
                assert snap is not None
                await self.events.emit(
                    s, snap.tenant, "snapshot", "created", sid, repo.snapshot_out(snap).model_dump(mode="json")
                )
        self.events.notify()

    async def _op_snap_fail(self, op: dict[str, Any], why: str) -> None:
        sid = op["params"]["snapshot_id"]
        async with self.db.sessions() as s:
            snap = await repo.snapshot_by_id(s, None, sid)
        if snap is None:
            return
        try:
            await (await self.backend_for(snap.cluster_id)).delete_snapshot(sid)
        except BackendError as exc:
            log.warning("rollback of snapshot %s left its file (the watcher will remove it): %s", sid, exc)
        async with self.db.transaction() as s:
            await s.execute(t.snapshots.delete().where(t.snapshots.c.id == sid, t.snapshots.c.status == "creating"))

    async def get_snapshot(self, p: Principal, snapshot_id: str) -> Snapshot:
        async with self.db.sessions() as s:
            row = await repo.snapshot_by_id(s, None if p.is_admin else p.tenant, snapshot_id)
        if row is None:
            raise NotFound(f"snapshot {snapshot_id} not found", reason="snapshot_not_found")
        return repo.snapshot_out(row)

    async def list_snapshots(self, p: Principal, q: SnapshotListQuery) -> SnapshotList:
        tenant = q.tenant if (p.is_admin and q.tenant) else p.tenant
        c = t.snapshots.c
        query = select(t.snapshots).where(c.tenant == tenant).order_by(c.id).limit(q.limit + 1)
        if q.volume_id:
            query = query.where(c.volume_id == q.volume_id)
        if q.starting_token:
            query = query.where(c.id > q.starting_token)
        async with self.db.sessions() as s:
            rows = (await s.execute(query)).all()
        items = [repo.snapshot_out(r) for r in rows[: q.limit]]
        return SnapshotList(items=items, next_token=items[-1].id if len(rows) > q.limit else None)

    async def delete_snapshot(self, p: Principal, snapshot_id: str, wait_s: float) -> None:
        async with self.db.transaction() as s:
            snap = await repo.snapshot_by_id(s, p.tenant, snapshot_id)
            if snap is None:
                raise NotFound(f"snapshot {snapshot_id} not found", reason="snapshot_not_found")
            op_id = await self._pending_op_in(s, snapshot_id, "snapshot.delete")
            if op_id is None:
                if snap.status not in ("available", "error"):
                    raise Aborted(f"snapshot {snapshot_id} is {snap.status}; retry once that finishes")
                await s.execute(
                    update(t.snapshots)
                    .where(t.snapshots.c.id == snapshot_id)
                    .values(status="deleting", updated_at=now())
                )
                op = self.runner.values("snapshot.delete", snapshot_id, snap.tenant, {"snapshot_id": snapshot_id})
                await s.execute(t.operations.insert().values(**op))
                op_id = str(op["id"])
        self.runner.launch(op_id)
        await self.runner.wait(op_id, wait_s)

    async def _op_snapdel_do(self, op: dict[str, Any]) -> None:
        async with self.db.sessions() as s:
            snap = await repo.snapshot_by_id(s, None, op["params"]["snapshot_id"])
        if snap is None or snap.status != "deleting":
            return
        await (await self.backend_for(snap.cluster_id)).delete_snapshot(snap.id)

    async def _op_snapdel_finish(self, op: dict[str, Any]) -> None:
        sid = op["params"]["snapshot_id"]
        async with self.db.transaction() as s:
            snap = await repo.snapshot_by_id(s, None, sid)
            if snap is None:
                return
            res = await s.execute(
                t.snapshots.delete().where(t.snapshots.c.id == sid, t.snapshots.c.status == "deleting")
            )
            if affected(res) == 1:
                await self.events.emit(
                    s, snap.tenant, "snapshot", "deleted", sid, repo.snapshot_out(snap).model_dump(mode="json")
                )
        self.events.notify()

    async def _op_snapdel_fail(self, op: dict[str, Any], why: str) -> None:
        async with self.db.transaction() as s:
            await s.execute(
                update(t.snapshots)
                .where(t.snapshots.c.id == op["params"]["snapshot_id"], t.snapshots.c.status == "deleting")
                .values(status="error", updated_at=now())
            )

    # -- clusters, types, quotas (admin) ----------------------------------------

    async def register_cluster(self, p: Principal, req: ClusterRegister) -> Cluster:
        p.require_admin()
        config = validate_backend_config(req.backend, req.config)
        cluster_id = new_id("cl")
        async with self.db.transaction() as s:
            known = set((await s.execute(select(t.volume_types.c.name))).scalars())
            unknown = sorted(set(req.volume_types) - known)
            if unknown:
                raise InvalidArgument(f"unknown volume types: {', '.join(unknown)}", reason="unknown_volume_type")
            existing = (await s.execute(select(t.clusters).where(t.clusters.c.name == req.name))).first()
            if existing is not None:
                raise AlreadyExists(f"a cluster named {req.name!r} is already registered", cluster_id=existing.id)
            await s.execute(
                t.clusters.insert().values(
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
                    provisioned_gib=0,
                    volume_count=0,
                )
            )
            row = (await s.execute(select(t.clusters).where(t.clusters.c.id == cluster_id))).one()
            out = repo.cluster_out(row)
            await self.events.emit(s, SYSTEM_TENANT, "cluster", "registered", cluster_id, out.model_dump(mode="json"))
        self.events.notify()
        return out

    async def update_cluster(self, p: Principal, req: ClusterUpdate) -> Cluster:
        p.require_admin()
        changes = req.model_dump(exclude={"id"}, exclude_unset=True)
        async with self.db.transaction() as s:
            if "volume_types" in changes:
                known = set((await s.execute(select(t.volume_types.c.name))).scalars())
                unknown = sorted(set(changes["volume_types"]) - known)
                if unknown:
                    raise InvalidArgument(f"unknown volume types: {', '.join(unknown)}", reason="unknown_volume_type")
            if changes:
                res = await s.execute(
                    update(t.clusters).where(t.clusters.c.id == req.id).values(**changes, updated_at=now())
                )
                if affected(res) != 1:
                    raise NotFound(f"cluster {req.id} not found", reason="cluster_not_found")
            row = (await s.execute(select(t.clusters).where(t.clusters.c.id == req.id))).first()
            if row is None:
                raise NotFound(f"cluster {req.id} not found", reason="cluster_not_found")
            out = repo.cluster_out(row)
            if changes:
                await self.events.emit(s, SYSTEM_TENANT, "cluster", "updated", req.id, out.model_dump(mode="json"))
        self.events.notify()
        return out

    async def list_clusters(self, p: Principal) -> ClusterList:
        p.require_admin()
        async with self.db.sessions() as s:
            rows = (await s.execute(select(t.clusters).order_by(t.clusters.c.name))).all()
        items = []
        for r in rows:
            cap = await self._capacity_of(r)
            items.append(repo.cluster_out(r, cap.total_bytes, cap.free_bytes) if cap else repo.cluster_out(r))
        return ClusterList(items=items)

    async def create_volume_type(self, p: Principal, req: VolumeTypeCreate) -> VolumeType:
        p.require_admin()
        async with self.db.transaction() as s:
            row = (await s.execute(select(t.volume_types).where(t.volume_types.c.name == req.name))).first()
            if row is not None:
                if row.description != req.description:
                    raise AlreadyExists(f"volume type {req.name!r} exists with another description")
                return VolumeType(name=row.name, description=row.description)
            await s.execute(t.volume_types.insert().values(name=req.name, description=req.description))
        return VolumeType(name=req.name, description=req.description)

    async def list_volume_types(self) -> VolumeTypeList:
        async with self.db.sessions() as s:
            rows = (await s.execute(select(t.volume_types).order_by(t.volume_types.c.name))).all()
        return VolumeTypeList(items=[VolumeType(name=r.name, description=r.description) for r in rows])

    async def set_quota(self, p: Principal, req: QuotaSet) -> Quota:
        p.require_admin()
        async with self.db.transaction() as s:
            await repo.insert_ignore(
                s,
                t.quotas,
                {
                    "tenant": req.tenant,
                    "volumes": req.volumes,
                    "gigabytes": req.gigabytes,
                    "used_volumes": 0,
                    "used_gigabytes": 0,
                },
            )
            await s.execute(
                update(t.quotas)
                .where(t.quotas.c.tenant == req.tenant)
                .values(volumes=req.volumes, gigabytes=req.gigabytes)
            )
            row = (await s.execute(select(t.quotas).where(t.quotas.c.tenant == req.tenant))).one()
            out = Quota.model_validate(row._mapping)
            await self.events.emit(s, req.tenant, "quota", "updated", req.tenant, out.model_dump(mode="json"))
        self.events.notify()
        return out

    async def get_quota(self, p: Principal, tenant: str | None) -> Quota:
        target = tenant or p.tenant
        if target != p.tenant:
            p.require_admin()
        async with self.db.sessions() as s:
            row = (await s.execute(select(t.quotas).where(t.quotas.c.tenant == target))).first()
        if row is None:
            return Quota(
                tenant=target,
                volumes=self.default_quota[0],
                gigabytes=self.default_quota[1],
                used_volumes=0,
                used_gigabytes=0,
            )
        return Quota.model_validate(row._mapping)

    async def bootstrap_file_cluster(self, root: str) -> None:
        """Embedded default: one volume type and one file cluster, registered once."""
        async with self.db.transaction() as s:
            if (await s.execute(select(func.count()).select_from(t.clusters))).scalar_one() > 0:
                return
            await repo.insert_ignore(s, t.volume_types, {"name": "standard", "description": "thin file-backed volumes"})
            await s.execute(
                t.clusters.insert().values(
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
                    provisioned_gib=0,
                    volume_count=0,
                )
            )

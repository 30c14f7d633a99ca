"""Volumes: create (with placement), read, expand and delete, over HTTP and the bus alike.

Each mutation is three steps: (1) one transaction that validates, reserves quota and
cluster room, moves the record along its lifecycle and writes an operation row; (2) the
idempotent backend call; (3) one transaction that commits the final status with its event
in the outbox. Steps 2 and 3 are the operation (volume_ops.py), resumed after a crash.
Creates arriving together share the transactions of steps 1 and 3 (GroupCommit): every
create needs the same quota and cluster rows, and one transaction at a time can hold them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import repo
from berth_provisioner.context import Context
from berth_provisioner.lifecycle import SOURCE_SNAPSHOT_STATUSES, SOURCE_VOLUME_STATUSES, VOLUME, VolumeStatus
from berth_provisioner.operations import new_operation
from berth_provisioner.placement import ClusterView, NoValidCluster, PlacementRequest, rank
from berth_provisioner.volume_types import require_known
from berth_shared.aio import SharedRead
from berth_shared.auth import Principal
from berth_shared.db import GroupCommit
from berth_shared.errors import (
    Aborted,
    AlreadyExists,
    BerthError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from berth_shared.faults import checkpoint
from berth_shared.ids import new_id
from berth_shared.messages.common import InventoryPage, ListQuery
from berth_shared.messages.provisioner import Volume, VolumeCreate, VolumeList, VolumeLocation


@dataclass(frozen=True)
class NewVolume:
    """A create ready to record: the volume's row, its operation, the clusters that can
    take it (best first; the row names the first)."""

    row: dict[str, Any]
    op: dict[str, Any]
    ranked: list[ClusterView]

    @property
    def volume_id(self) -> str:
        return str(self.row["id"])

    @property
    def size_gib(self) -> int:
        return int(self.row["size_gib"])


def _grouped(items: list[NewVolume], key: Callable[[NewVolume], str]) -> list[tuple[str, list[NewVolume]]]:
    """The items by key, in key order: every transaction that updates several quota (or
    cluster) rows locks them in the same order, so two of them cannot deadlock."""
    groups: dict[str, list[NewVolume]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return sorted(groups.items())


@dataclass(frozen=True)
class Started:
    """A create recorded with its operation, ready to run."""

    volume_id: str
    op: dict[str, Any]


def _not_found(volume_id: str) -> NotFound:
    return NotFound(f"volume {volume_id} not found", reason="volume_not_found")


class Volumes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # Creates arriving together share one recording transaction (see _record).
        self._recorder: GroupCommit[NewVolume, None] = GroupCommit(ctx.db, self._record, name="volume-create-record")
        # Creates arriving together share the clusters' read too (each one started after
        # the create arrived: nothing committed before it is missed).
        self._clusters = SharedRead(self._read_clusters, name="volume-create-clusters")

    async def _read_clusters(self) -> list[Row[Any]]:
        async with self.ctx.db.statements() as conn:  # Core: no ORM session per create
            return await repo.clusters.all_rows(conn)

    # -- create ------------------------------------------------------------------

    async def create(self, p: Principal, req: VolumeCreate, wait_s: float) -> Volume:
        p.require_writer()
        try:
            started = await self._start_create(p, req)
        except (IntegrityError, BerthError):
            # The name is taken (its INSERT failed; or a check failed that a replay must not
            # be held to: the volume exists whatever quota or placement say now): a replay.
            async with self.ctx.db.reads() as s:
                existing = await repo.volumes.by_name(s, p.tenant, req.name)
            if existing is None:
                raise
            return await self._replay_create(existing, req, wait_s)
        checkpoint("volume.create.after_record")
        self.ctx.runner.launch(started.op["id"], fresh=started.op)
        await self.ctx.runner.wait(started.op["id"], wait_s)
        # The finishing transaction's volume (RETURNING), when it ran here: no read back.
        vol = self.ctx.finished.take(started.volume_id)
        return vol if vol is not None else await self.get(p, started.volume_id)

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
        if row.status == VolumeStatus.CREATING:
            await self._follow(row.id, "volume.create", wait_s)
        async with self.ctx.db.reads() as s:
            fresh = await repo.volumes.by_id(s, row.tenant, row.id)
        if fresh is None:
            raise NotFound(f"volume {req.name!r} failed to create and was rolled back; retry")
        return repo.volumes.out(fresh)

    async def _follow(self, resource_id: str, kind: str, wait_s: float) -> None:
        """Run (or wait for) the resource's pending operation of this kind, if any."""
        async with self.ctx.db.reads() as s:
            op_id = await repo.operations.pending(s, resource_id, kind)
        if op_id:
            self.ctx.runner.launch(op_id)
            await self.ctx.runner.wait(op_id, wait_s)

    async def _start_create(self, p: Principal, req: VolumeCreate) -> Started:
        """Record the volume and its operation in one transaction (shared with concurrent
        creates: see `_record`). A name already taken fails the volume's INSERT
        (IntegrityError) and the create commits nothing."""
        # Read once, before the transaction, with the capacity probe: the conditional
        # UPDATE in take_room, not this read, keeps a cluster from being overfilled.
        clusters = await self._clusters.get()
        if not any(req.volume_type in r.volume_types for r in clusters):
            # A type some cluster serves is known (clusters are registered with known types).
            async with self.ctx.db.reads() as s:
                await require_known(s, [req.volume_type])
        free = await self.ctx.free_fractions(clusters)
        if req.source_snapshot_id is None and req.source_volume_id is None:
            new = self._new_volume(p.tenant, req, self._rank(p.tenant, req, clusters, free))
            await self._recorder.submit(new)
            return self._started(new)
        # From a source: checked, and placed on the source's cluster, in the transaction.
        async with self.ctx.db.transaction() as s:
            pinned = await self._source_cluster(s, p, req)
            new = self._new_volume(
                p.tenant, req, self._rank(p.tenant, req, [r for r in clusters if r.id == pinned], free)
            )
            await self._record(s, [new])
        return self._started(new)

    def _started(self, new: NewVolume) -> Started:
        self.ctx.recorded.put(new.volume_id, new.row)  # for the backend step: no read back
        return Started(new.volume_id, new.op)

    def _new_volume(self, tenant: str, req: VolumeCreate, ranked: list[ClusterView]) -> NewVolume:
        volume_id = new_id("vol")
        row = {
            "id": volume_id,
            "tenant": tenant,
            "name": req.name,
            "size_gib": req.size_gib,
            "volume_type": req.volume_type,
            "zone": ranked[0].zone,
            "cluster_id": ranked[0].id,
            "status": VolumeStatus.CREATING,
            "source_snapshot_id": req.source_snapshot_id,
            "source_volume_id": req.source_volume_id,
        }
        op = new_operation(self.ctx.runner, "volume.create", volume_id, tenant, {"volume_id": volume_id})
        return NewVolume(row, op, ranked)

    async def _record(self, s: AsyncSession, batch: list[NewVolume]) -> list[None]:
        """Write new volumes with their operations, and reserve their quota and room, per
        tenant and per cluster at once (several creates: one UPDATE of the quota, one of
        the cluster). A batch that would not fit all together fails whole; GroupCommit
        then records each alone, and those that fit succeed."""
        await repo.volumes.insert_many(s, [n.row for n in batch])
        await repo.operations.insert_many(s, [n.op for n in batch])
        # The rows every create of the tenant (and on the cluster) updates come last:
        # their locks are held from here to the commit, no longer.
        for tenant, group in _grouped(batch, lambda n: str(n.row["tenant"])):
            gib = sum(n.size_gib for n in group)
            await repo.accounting.reserve_quota(s, tenant, len(group), gib, self.ctx.default_quota)
        if len(batch) == 1:
            await self._take_room(s, batch[0])
            return [None]
        for cluster_id, group in _grouped(batch, lambda n: n.ranked[0].id):
            gib = sum(n.size_gib for n in group)
            if not await repo.accounting.take_room(s, cluster_id, gib, len(group), active_only=True):
                raise ResourceExhausted("the cluster has no room for the whole batch", reason="no_valid_cluster")
        return [None] * len(batch)

    async def _source_cluster(self, s: AsyncSession, p: Principal, req: VolumeCreate) -> str | None:
        if req.source_snapshot_id:
            snap = await repo.snapshots.by_id(s, p.tenant, req.source_snapshot_id)
            if snap is None:
                raise NotFound(f"snapshot {req.source_snapshot_id} not found", reason="snapshot_not_found")
            if snap.status not in SOURCE_SNAPSHOT_STATUSES:
                raise FailedPrecondition(f"snapshot {snap.id} is {snap.status}", reason="snapshot_not_ready")
            if req.size_gib < snap.size_gib:
                raise OutOfRange(f"size_gib must be at least the snapshot's {snap.size_gib} GiB")
            return str(snap.cluster_id)
        if req.source_volume_id:
            src = await repo.volumes.by_id(s, p.tenant, req.source_volume_id)
            if src is None:
                raise _not_found(req.source_volume_id)
            if src.status not in SOURCE_VOLUME_STATUSES:
                raise FailedPrecondition(f"volume {src.id} is {src.status}", reason="volume_not_ready")
            if req.size_gib < src.size_gib:
                raise OutOfRange(f"size_gib must be at least the source volume's {src.size_gib} GiB")
            return str(src.cluster_id)
        return None

    def _rank(
        self, tenant: str, req: VolumeCreate, clusters: list[Row[Any]], free: dict[str, float | None]
    ) -> list[ClusterView]:
        views = [repo.clusters.view(r, free.get(r.id)) for r in clusters]
        preq = PlacementRequest(tenant=tenant, size_gib=req.size_gib, volume_type=req.volume_type, zone=req.zone)
        try:
            return rank(views, preq)
        except NoValidCluster as exc:
            raise ResourceExhausted(
                str(exc), reason="no_valid_cluster", rejections=[r.__dict__ for r in exc.rejections]
            ) from exc

    async def _take_room(self, s: AsyncSession, new: NewVolume) -> None:
        """Room on the best cluster that still has it; the volume moves there if that is
        not the one it was recorded on (the first ranked)."""
        for view in new.ranked:
            # Conditional: concurrent creates cannot push a cluster past its limit.
            if await repo.accounting.take_room(s, view.id, new.size_gib, 1, active_only=True):
                if view.id != new.row["cluster_id"]:
                    await repo.volumes.place(s, new.volume_id, view.id, view.zone)
                    new.row.update(cluster_id=view.id, zone=view.zone)
                return
        raise ResourceExhausted("storage clusters filled up while placing the volume; retry", reason="no_valid_cluster")

    # -- read --------------------------------------------------------------------

    async def get(self, p: Principal, volume_id: str) -> Volume:
        async with self.ctx.db.reads() as s:
            row = await repo.volumes.by_id(s, p.scope, volume_id)
        if row is None:
            raise _not_found(volume_id)
        return repo.volumes.out(row)

    async def locate(self, p: Principal, volume_id: str) -> VolumeLocation:
        """The volume with its cluster's backend kind and config: for services, not tenants."""
        p.require_admin()
        async with self.ctx.db.sessions() as s:
            row = await repo.volumes.by_id(s, None, volume_id)
            if row is None:
                raise _not_found(volume_id)
            cluster = await repo.clusters.by_id(s, row.cluster_id)
            assert cluster is not None  # a foreign key
        return VolumeLocation(volume=repo.volumes.out(row), backend=cluster.backend, config=dict(cluster.config))

    async def list(self, p: Principal, q: ListQuery) -> VolumeList:
        tenant = q.tenant if (p.is_admin and q.tenant) else p.tenant
        async with self.ctx.db.sessions() as s:
            rows = await repo.volumes.page(s, tenant, q.limit, q.starting_token)
        items = [repo.volumes.out(r) for r in rows[: q.limit]]
        return VolumeList(items=items, next_token=items[-1].id if len(rows) > q.limit else None)

    async def inventory(self, p: Principal, q: InventoryPage) -> VolumeList:
        """Every tenant's volumes by id, a page at a time (admin: the watcher's source)."""
        p.require_admin()
        async with self.ctx.db.sessions() as s:
            rows = await repo.volumes.page(s, None, q.limit, q.starting_token)
        items = [repo.volumes.out(r) for r in rows[: q.limit]]
        return VolumeList(items=items, next_token=items[-1].id if len(rows) > q.limit else None)

    # -- retype ------------------------------------------------------------------

    async def retype(self, p: Principal, volume_id: str, volume_type: str) -> Volume:
        """Move a volume to another volume type in place, on its own cluster, which must
        serve that type (the data never moves). Nothing changes on the backend (a type's IO
        limits are the watcher's, applied on the `volume.retyped` event), so the record and
        its event are one transaction: nothing to resume after a crash. Asking for the type
        the volume has is a no-op."""
        p.require_writer()
        async with self.ctx.db.transaction() as s:
            vol = await repo.volumes.by_id(s, p.scope, volume_id)
            if vol is None:
                raise _not_found(volume_id)
            await require_known(s, [volume_type])
            if vol.volume_type == volume_type:
                return repo.volumes.out(vol)
            if vol.status != VolumeStatus.AVAILABLE:
                raise Aborted(f"volume {volume_id} is {vol.status}; retry once that finishes")
            cluster = await repo.clusters.by_id(s, vol.cluster_id)
            assert cluster is not None  # a foreign key
            if volume_type not in cluster.volume_types:
                raise InvalidArgument(
                    f"volume {volume_id} is on cluster {cluster.name}, which does not serve volume type "
                    f"{volume_type} (it serves {', '.join(sorted(cluster.volume_types))}); a type change "
                    "never moves data",
                    reason="type_not_on_cluster",
                    valid_types=sorted(cluster.volume_types),
                )
            row = await repo.volumes.retype(s, volume_id, vol.status, vol.volume_type, volume_type)
            if row is None:
                raise Aborted(f"volume {volume_id} changed concurrently; retry")
            out = repo.volumes.out(row)
            data = out.model_dump(mode="json") | {"previous_type": vol.volume_type}
            await self.ctx.events.emit(s, out.tenant, "volume", "retyped", volume_id, data)
        self.ctx.events.notify()
        return out

    # -- delete ------------------------------------------------------------------

    async def delete(self, p: Principal, volume_id: str, wait_s: float) -> None:
        p.require_writer()
        op_id = await self._start_delete(p, volume_id)
        checkpoint("volume.delete.after_record")
        self.ctx.runner.launch(op_id)
        await self.ctx.runner.wait(op_id, wait_s)
        # A delete the backend refused (RBD: the image still has watchers) left the volume in
        # "error": say so, instead of a success for a volume that still exists.
        failure = await self.ctx.runner.failure(op_id)
        if failure is not None:
            raise failure

    async def _start_delete(self, p: Principal, volume_id: str) -> str:
        async with self.ctx.db.transaction() as s:
            vol = await repo.volumes.by_id(s, p.scope, volume_id)
            if vol is None:
                raise _not_found(volume_id)
            if vol.status == VolumeStatus.DELETING:
                op_id = await repo.operations.pending(s, volume_id, "volume.delete")
                if op_id:
                    return op_id
            if not VOLUME.allows(vol.status, "delete"):
                raise Aborted(f"volume {volume_id} is {vol.status}; retry once that finishes")
            if not await repo.volumes.move(s, volume_id, vol.status, "delete"):
                raise Aborted(f"volume {volume_id} changed concurrently; retry")
            # Counted only once the row is ours: a snapshot that took the volume's lock
            # first (see Snapshots._start) has committed by now and is seen here.
            if await repo.snapshots.count_of_volume(s, volume_id) > 0:
                raise FailedPrecondition(
                    f"volume {volume_id} has snapshots; delete them first", reason="volume_has_snapshots"
                )
            op = new_operation(self.ctx.runner, "volume.delete", volume_id, vol.tenant, {"volume_id": volume_id})
            await repo.operations.insert(s, op)
            return str(op["id"])

    # -- expand ------------------------------------------------------------------

    async def expand(self, p: Principal, volume_id: str, size_gib: int, wait_s: float) -> Volume:
        p.require_writer()
        op_id = await self._start_expand(p, volume_id, size_gib)
        if op_id:
            self.ctx.runner.launch(op_id)
            await self.ctx.runner.wait(op_id, wait_s)
        return await self.get(p, volume_id)

    async def _start_expand(self, p: Principal, volume_id: str, size_gib: int) -> str | None:
        async with self.ctx.db.transaction() as s:
            vol = await repo.volumes.by_id(s, p.scope, volume_id)
            if vol is None:
                raise _not_found(volume_id)
            if vol.status == VolumeStatus.EXPANDING:
                op_id = await repo.operations.pending(s, volume_id, "volume.expand")
                if op_id and (await repo.operations.params(s, op_id))["size_gib"] == size_gib:
                    return op_id
                raise Aborted(f"volume {volume_id} is being expanded; retry once that finishes")
            if not VOLUME.allows(vol.status, "expand"):
                raise Aborted(f"volume {volume_id} is {vol.status}; retry once that finishes")
            if size_gib < vol.size_gib:
                raise OutOfRange(f"volumes only grow: {volume_id} has {vol.size_gib} GiB, asked {size_gib}")
            if size_gib == vol.size_gib:
                return None
            # Claim the volume first and only from the state read above: on PostgreSQL two
            # concurrent expands both read "available", and an unconditional claim let both
            # reserve quota and cluster room while only one expand could ever release it.
            if not await repo.volumes.move(s, volume_id, vol.status, "expand", size_gib_was=vol.size_gib):
                raise Aborted(f"volume {volume_id} changed concurrently; retry")
            await repo.accounting.reserve_growth(s, vol, size_gib - vol.size_gib, self.ctx.default_quota)
            params = {"volume_id": volume_id, "size_gib": size_gib, "from_gib": vol.size_gib}
            op = new_operation(self.ctx.runner, "volume.expand", volume_id, vol.tenant, params)
            await repo.operations.insert(s, op)
            return str(op["id"])

"""Group snapshots: several volumes of one tenant snapshotted at one point in time (a
database spread over volumes), and their operations' steps.

A group snapshot is a record with one member snapshot per volume (rows of `snapshots`
carrying `group_snapshot_id`). Members are snapshots like any other for reading and for
restoring a volume, but they are made, deleted and failed only with their group: every
status change of the group moves its members in the same transaction. The mutations have
the three steps of volumes.py; the backend call is `GroupSnapshots` of
`berth_shared.backends` (file and RBD backends; any other is refused up front).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import repo
from berth_provisioner.context import Context
from berth_provisioner.lifecycle import GROUP_SNAPSHOT, SOURCE_VOLUME_STATUSES, GroupSnapshotStatus
from berth_provisioner.operations import new_operation
from berth_shared.auth import Principal
from berth_shared.backends import GroupSnapshots as GroupSnapshotBackend
from berth_shared.backends import group_snapshots
from berth_shared.errors import Aborted, AlreadyExists, BerthError, FailedPrecondition, NotFound
from berth_shared.faults import checkpoint
from berth_shared.ids import new_id
from berth_shared.messages.common import ListQuery
from berth_shared.messages.provisioner import GroupSnapshot, GroupSnapshotCreate, GroupSnapshotList

log = logging.getLogger(__name__)
G = GroupSnapshotStatus


def _not_found(group_snapshot_id: str) -> NotFound:
    return NotFound(f"group snapshot {group_snapshot_id} not found", reason="group_snapshot_not_found")


class GroupSnapshots:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        ctx.runner.register("group_snapshot.create", self.create_do, self.create_finish, self.create_fail)
        ctx.runner.register("group_snapshot.delete", self.delete_do, self.delete_finish, self.delete_fail)

    async def _run(self, op_id: str, wait_s: float) -> None:
        """Run (or follow) the operation; its failure, if it failed, is the caller's answer."""
        self.ctx.runner.launch(op_id)
        await self.ctx.runner.wait(op_id, wait_s)
        failure = await self.ctx.runner.failure(op_id)
        if failure is not None:
            raise failure

    # -- use cases -------------------------------------------------------------------

    async def create(self, p: Principal, req: GroupSnapshotCreate, wait_s: float) -> GroupSnapshot:
        p.require_writer()
        async with self.ctx.db.sessions() as s:
            owner = await self._owner(s, p, req.volume_ids)
            existing = await repo.group_snapshots.by_name(s, owner, req.name)
        if existing is None:
            try:
                gsid, op_id = await self._start(owner, req)
            except IntegrityError:
                async with self.ctx.db.sessions() as s:
                    existing = await repo.group_snapshots.by_name(s, owner, req.name)
                if existing is None:
                    raise
            else:
                checkpoint("group_snapshot.create.after_record")
                await self._run(op_id, wait_s)
                return await self.get(p, gsid)
        if sorted(existing.volume_ids) != sorted(req.volume_ids):
            raise AlreadyExists(
                f"group snapshot {req.name!r} already exists for other volumes ({', '.join(existing.volume_ids)})",
                group_snapshot_id=existing.id,
            )
        if existing.status == G.CREATING:
            async with self.ctx.db.sessions() as s:
                pending = await repo.operations.pending(s, existing.id, "group_snapshot.create")
            if pending:
                await self._run(pending, wait_s)
        return await self.get(p, existing.id)

    @staticmethod
    async def _owner(s: AsyncSession, p: Principal, volume_ids: list[str]) -> str:
        """The tenant of the volumes, who owns the group snapshot (also when an admin takes it)."""
        tenants = set()
        for vid in volume_ids:
            vol = await repo.volumes.by_id(s, p.scope, vid)
            if vol is None:
                raise NotFound(f"volume {vid} not found", reason="volume_not_found")
            tenants.add(str(vol.tenant))
        if len(tenants) > 1:
            raise FailedPrecondition(
                f"the volumes belong to several tenants ({', '.join(sorted(tenants))}): a group snapshot is one "
                "tenant's",
                reason="volumes_not_groupable",
            )
        return tenants.pop()

    async def _start(self, owner: str, req: GroupSnapshotCreate) -> tuple[str, str]:
        gsid = new_id("gsnap")
        volume_ids = sorted(req.volume_ids)
        async with self.ctx.db.transaction() as s:
            volumes = [await self._source(s, owner, vid) for vid in volume_ids]  # sorted: one lock order
            clusters = sorted({v.cluster_id for v in volumes})
            if len(clusters) > 1:
                where = ", ".join(f"{v.id} on {v.cluster_id}" for v in volumes)
                raise FailedPrecondition(
                    f"the volumes are on different storage clusters ({where}): one consistent cut is made on one "
                    "cluster; snapshot each cluster's volumes as their own group",
                    reason="volumes_not_groupable",
                )
            cluster = await repo.clusters.by_id(s, clusters[0])
            assert cluster is not None  # a foreign key
            group_snapshots(self.ctx.backend_of(cluster))  # Unsupported for a backend without them
            await repo.group_snapshots.insert(
                s,
                id=gsid,
                tenant=owner,
                name=req.name,
                volume_ids=volume_ids,
                cluster_id=cluster.id,
                status=G.CREATING,
            )
            for vol in volumes:
                await repo.snapshots.insert(
                    s,
                    id=new_id("snap"),
                    tenant=owner,
                    name=f"{gsid}.{vol.id}",
                    volume_id=vol.id,
                    size_gib=vol.size_gib,
                    cluster_id=vol.cluster_id,
                    status=G.CREATING,
                    group_snapshot_id=gsid,
                )
            op = new_operation(self.ctx.runner, "group_snapshot.create", gsid, owner, {"group_snapshot_id": gsid})
            await repo.operations.insert(s, op)
        return gsid, str(op["id"])

    @staticmethod
    async def _source(s: AsyncSession, owner: str, volume_id: str) -> Row[Any]:
        # Locked, as for a single snapshot (snapshots.py): a concurrent delete of the volume
        # waits, then sees the member and refuses.
        vol = await repo.volumes.by_id(s, owner, volume_id, lock=True)
        if vol is None:
            raise NotFound(f"volume {volume_id} not found", reason="volume_not_found")
        if vol.status not in SOURCE_VOLUME_STATUSES:
            raise Aborted(f"volume {vol.id} is {vol.status}; retry once that finishes")
        return vol

    async def get(self, p: Principal, group_snapshot_id: str) -> GroupSnapshot:
        async with self.ctx.db.sessions() as s:
            row = await repo.group_snapshots.by_id(s, p.scope, group_snapshot_id)
            if row is None:
                raise _not_found(group_snapshot_id)
            members = await repo.group_snapshots.members(s, [row.id])
        return repo.group_snapshots.out(row, members[row.id])

    async def list(self, p: Principal, q: ListQuery) -> GroupSnapshotList:
        tenant = q.tenant if (p.is_admin and q.tenant) else p.tenant
        async with self.ctx.db.sessions() as s:
            rows = await repo.group_snapshots.page(s, tenant, q.limit, q.starting_token)
            members = await repo.group_snapshots.members(s, [r.id for r in rows[: q.limit]])
        items = [repo.group_snapshots.out(r, members[r.id]) for r in rows[: q.limit]]
        return GroupSnapshotList(items=items, next_token=items[-1].id if len(rows) > q.limit else None)

    async def delete(self, p: Principal, group_snapshot_id: str, wait_s: float) -> None:
        p.require_writer()
        async with self.ctx.db.transaction() as s:
            row = await repo.group_snapshots.by_id(s, p.scope, group_snapshot_id)
            if row is None:
                raise _not_found(group_snapshot_id)
            op_id = await repo.operations.pending(s, group_snapshot_id, "group_snapshot.delete")
            if op_id is None:
                if not GROUP_SNAPSHOT.allows(row.status, "delete"):
                    raise Aborted(f"group snapshot {group_snapshot_id} is {row.status}; retry once that finishes")
                if not await repo.group_snapshots.move(s, group_snapshot_id, row.status, "delete"):
                    raise Aborted(f"group snapshot {group_snapshot_id} changed concurrently; retry")
                params = {"group_snapshot_id": group_snapshot_id}
                op = new_operation(self.ctx.runner, "group_snapshot.delete", group_snapshot_id, row.tenant, params)
                await repo.operations.insert(s, op)
                op_id = str(op["id"])
        await self._run(op_id, wait_s)

    # -- operation steps -------------------------------------------------------------

    async def _group_in(self, op: dict[str, Any], status: str | None = None) -> tuple[Row[Any], dict[str, str]] | None:
        """The operation's group snapshot (if still in `status`) and its members
        (member snapshot id -> volume id)."""
        gsid = op["params"]["group_snapshot_id"]
        async with self.ctx.db.sessions() as s:
            row = await repo.group_snapshots.by_id(s, None, gsid)
            if row is None or status not in (None, row.status):
                return None
            members = (await repo.group_snapshots.members(s, [gsid]))[gsid]
        return row, {m.id: m.volume_id for m in members}

    async def _emit(self, s: AsyncSession, gsid: str, verb: str) -> None:
        """The group's event, and each member's as a snapshot's (what snapshot consumers follow)."""
        row = await repo.group_snapshots.by_id(s, None, gsid)
        assert row is not None
        members = (await repo.group_snapshots.members(s, [gsid]))[gsid]
        group = repo.group_snapshots.out(row, members)
        for snap in group.snapshots:
            await self.ctx.events.emit(s, row.tenant, "snapshot", verb, snap.id, snap.model_dump(mode="json"))
        await self.ctx.events.emit(s, row.tenant, "group_snapshot", verb, gsid, group.model_dump(mode="json"))

    async def _backend(self, row: Row[Any]) -> GroupSnapshotBackend:
        return group_snapshots(await self.ctx.backend_for(row.cluster_id))

    async def create_do(self, op: dict[str, Any]) -> None:
        found = await self._group_in(op, G.CREATING)
        if found is not None:
            row, members = found
            await (await self._backend(row)).create_group_snapshot(row.id, members)
            checkpoint("group_snapshot.create.after_backend")

    async def create_finish(self, op: dict[str, Any]) -> None:
        gsid = op["params"]["group_snapshot_id"]
        async with self.ctx.db.transaction() as s:
            if await repo.group_snapshots.move(s, gsid, G.CREATING, "created"):
                await self._emit(s, gsid, "created")
        self.ctx.events.notify()

    async def create_fail(self, op: dict[str, Any], why: str) -> None:
        found = await self._group_in(op, G.CREATING)
        if found is None:
            return
        row, members = found
        try:
            await (await self._backend(row)).delete_group_snapshot(row.id, members)
        except BerthError as exc:
            log.warning("rollback of group snapshot %s left its copies (the watcher will find them): %s", row.id, exc)
        async with self.ctx.db.transaction() as s:
            await repo.group_snapshots.move(s, row.id, G.CREATING, "create_failed")

    async def delete_do(self, op: dict[str, Any]) -> None:
        found = await self._group_in(op, G.DELETING)
        if found is not None:
            row, members = found
            await (await self._backend(row)).delete_group_snapshot(row.id, members)
            checkpoint("group_snapshot.delete.after_backend")

    async def delete_finish(self, op: dict[str, Any]) -> None:
        gsid = op["params"]["group_snapshot_id"]
        async with self.ctx.db.transaction() as s:
            row = await repo.group_snapshots.by_id(s, None, gsid)
            if row is not None and row.status == G.DELETING:
                await self._emit(s, gsid, "deleted")  # the last state, as for volumes
                await repo.group_snapshots.move(s, gsid, G.DELETING, "deleted")
        self.ctx.events.notify()

    async def delete_fail(self, op: dict[str, Any], why: str) -> None:
        async with self.ctx.db.transaction() as s:
            await repo.group_snapshots.move(s, op["params"]["group_snapshot_id"], G.DELETING, "delete_failed")

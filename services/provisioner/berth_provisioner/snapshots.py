"""Snapshots: create, read and delete, and their operations' steps (see volumes.py for the
three-step shape every mutation has)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import repo
from berth_provisioner.context import Context
from berth_provisioner.lifecycle import SNAPSHOT, SOURCE_VOLUME_STATUSES, SnapshotStatus
from berth_provisioner.operations import new_operation
from berth_shared.auth import Principal
from berth_shared.backends import BackendError
from berth_shared.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from berth_shared.ids import new_id
from berth_shared.messages.common import InventoryPage
from berth_shared.messages.provisioner import Snapshot, SnapshotCreate, SnapshotList, SnapshotListQuery

log = logging.getLogger(__name__)
S = SnapshotStatus


def _not_found(snapshot_id: str) -> NotFound:
    return NotFound(f"snapshot {snapshot_id} not found", reason="snapshot_not_found")


class Snapshots:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        ctx.runner.register("snapshot.create", self.create_do, self.create_finish, self.create_fail)
        ctx.runner.register("snapshot.delete", self.delete_do, self.delete_finish, self.delete_fail)

    async def _run(self, op_id: str, wait_s: float) -> None:
        self.ctx.runner.launch(op_id)
        await self.ctx.runner.wait(op_id, wait_s)

    # -- use cases -------------------------------------------------------------------

    async def create(self, p: Principal, req: SnapshotCreate, wait_s: float) -> Snapshot:
        p.require_writer()
        async with self.ctx.db.sessions() as s:
            # The snapshot belongs to its volume's tenant, also when an admin takes it.
            vol = await repo.volumes.by_id(s, p.scope, req.volume_id)
            if vol is None:
                raise NotFound(f"volume {req.volume_id} not found", reason="volume_not_found")
            owner = str(vol.tenant)
            existing = await repo.snapshots.by_name(s, owner, req.name)
        if existing is None:
            try:
                snap_id, op_id = await self._start(owner, req)
            except IntegrityError:
                async with self.ctx.db.sessions() as s:
                    existing = await repo.snapshots.by_name(s, owner, req.name)
                if existing is None:
                    raise
            else:
                await self._run(op_id, wait_s)
                return await self.get(p, snap_id)
        if existing.volume_id != req.volume_id:
            raise AlreadyExists(f"snapshot {req.name!r} already exists for another volume", snapshot_id=existing.id)
        if existing.status == S.CREATING:
            async with self.ctx.db.sessions() as s:
                pending = await repo.operations.pending(s, existing.id, "snapshot.create")
            if pending:
                await self._run(pending, wait_s)
        return await self.get(p, existing.id)

    async def _start(self, owner: str, req: SnapshotCreate) -> tuple[str, str]:
        snap_id = new_id("snap")
        async with self.ctx.db.transaction() as s:
            # Locked (PostgreSQL; SQLite serialises writers anyway) so that a concurrent
            # delete waits and then sees this snapshot, instead of both committing and the
            # snapshot outliving its volume.
            vol = await repo.volumes.by_id(s, owner, req.volume_id, lock=True)
            if vol is None:
                raise NotFound(f"volume {req.volume_id} not found", reason="volume_not_found")
            if vol.status not in SOURCE_VOLUME_STATUSES:
                raise Aborted(f"volume {vol.id} is {vol.status}; retry once that finishes")
            await repo.snapshots.insert(
                s,
                id=snap_id,
                tenant=owner,
                name=req.name,
                volume_id=vol.id,
                size_gib=vol.size_gib,
                cluster_id=vol.cluster_id,
                status=S.CREATING,
            )
            op = new_operation(self.ctx.runner, "snapshot.create", snap_id, owner, {"snapshot_id": snap_id})
            await repo.operations.insert(s, op)
        return snap_id, str(op["id"])

    async def get(self, p: Principal, snapshot_id: str) -> Snapshot:
        async with self.ctx.db.sessions() as s:
            row = await repo.snapshots.by_id(s, p.scope, snapshot_id)
        if row is None:
            raise _not_found(snapshot_id)
        return repo.snapshots.out(row)

    async def list(self, p: Principal, q: SnapshotListQuery) -> SnapshotList:
        tenant = q.tenant if (p.is_admin and q.tenant) else p.tenant
        async with self.ctx.db.sessions() as s:
            rows = await repo.snapshots.page(s, tenant, q.limit, q.starting_token, q.volume_id)
        items = [repo.snapshots.out(r) for r in rows[: q.limit]]
        return SnapshotList(items=items, next_token=items[-1].id if len(rows) > q.limit else None)

    async def inventory(self, p: Principal, q: InventoryPage) -> SnapshotList:
        """Every tenant's snapshots by id, a page at a time (admin: the watcher's source)."""
        p.require_admin()
        async with self.ctx.db.sessions() as s:
            rows = await repo.snapshots.page(s, None, q.limit, q.starting_token, None)
        items = [repo.snapshots.out(r) for r in rows[: q.limit]]
        return SnapshotList(items=items, next_token=items[-1].id if len(rows) > q.limit else None)

    async def delete(self, p: Principal, snapshot_id: str, wait_s: float) -> None:
        p.require_writer()
        async with self.ctx.db.transaction() as s:
            snap = await repo.snapshots.by_id(s, p.scope, snapshot_id)
            if snap is None:
                raise _not_found(snapshot_id)
            if snap.group_snapshot_id:
                raise FailedPrecondition(
                    f"snapshot {snapshot_id} is a member of group snapshot {snap.group_snapshot_id}: delete the group "
                    "snapshot (its members go with it)",
                    reason="snapshot_in_group",
                    group_snapshot_id=snap.group_snapshot_id,
                )
            op_id = await repo.operations.pending(s, snapshot_id, "snapshot.delete")
            if op_id is None:
                if not SNAPSHOT.allows(snap.status, "delete"):
                    raise Aborted(f"snapshot {snapshot_id} is {snap.status}; retry once that finishes")
                if not await repo.snapshots.move(s, snapshot_id, snap.status, "delete"):
                    raise Aborted(f"snapshot {snapshot_id} changed concurrently; retry")
                op = new_operation(
                    self.ctx.runner, "snapshot.delete", snapshot_id, snap.tenant, {"snapshot_id": snapshot_id}
                )
                await repo.operations.insert(s, op)
                op_id = str(op["id"])
        await self._run(op_id, wait_s)

    # -- operation steps -------------------------------------------------------------

    async def _snapshot_in(self, op: dict[str, Any], status: str | None = None) -> Row[Any] | None:
        async with self.ctx.db.sessions() as s:
            snap = await repo.snapshots.by_id(s, None, op["params"]["snapshot_id"])
        return snap if snap is not None and status in (None, snap.status) else None

    async def _emit(self, s: AsyncSession, snap: Row[Any], verb: str) -> None:
        data = repo.snapshots.out(snap).model_dump(mode="json")
        await self.ctx.events.emit(s, snap.tenant, "snapshot", verb, snap.id, data)

    async def create_do(self, op: dict[str, Any]) -> None:
        snap = await self._snapshot_in(op, S.CREATING)
        if snap is not None:
            await (await self.ctx.backend_for(snap.cluster_id)).create_snapshot(snap.id, snap.volume_id)

    async def create_finish(self, op: dict[str, Any]) -> None:
        sid = op["params"]["snapshot_id"]
        async with self.ctx.db.transaction() as s:
            if await repo.snapshots.move(s, sid, S.CREATING, "created"):
                snap = await repo.snapshots.by_id(s, None, sid)
                assert snap is not None
                await self._emit(s, snap, "created")
        self.ctx.events.notify()

    async def create_fail(self, op: dict[str, Any], why: str) -> None:
        snap = await self._snapshot_in(op)
        if snap is None:
            return
        try:
            await (await self.ctx.backend_for(snap.cluster_id)).delete_snapshot(snap.id)
        except BackendError as exc:
            log.warning("rollback of snapshot %s left its file (the watcher will remove it): %s", snap.id, exc)
        async with self.ctx.db.transaction() as s:
            await repo.snapshots.move(s, snap.id, S.CREATING, "create_failed")

    async def delete_do(self, op: dict[str, Any]) -> None:
        snap = await self._snapshot_in(op, S.DELETING)
        if snap is not None:
            await (await self.ctx.backend_for(snap.cluster_id)).delete_snapshot(snap.id)

    async def delete_finish(self, op: dict[str, Any]) -> None:
        sid = op["params"]["snapshot_id"]
        async with self.ctx.db.transaction() as s:
            snap = await repo.snapshots.by_id(s, None, sid)
            if snap is not None and await repo.snapshots.move(s, sid, S.DELETING, "deleted"):
                await self._emit(s, snap, "deleted")
        self.ctx.events.notify()

    async def delete_fail(self, op: dict[str, Any], why: str) -> None:
        async with self.ctx.db.transaction() as s:
            await repo.snapshots.move(s, op["params"]["snapshot_id"], S.DELETING, "delete_failed")

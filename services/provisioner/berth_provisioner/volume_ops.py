"""The volume operations' steps, run (and after a crash resumed) by the operation runner:
`do` makes the backend call (idempotent), `finish` commits the outcome with its event,
`fail` rolls back what the operation reserved."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import repo
from berth_provisioner.context import GIB, Context
from berth_provisioner.lifecycle import VolumeStatus
from berth_shared.backends import BackendError
from berth_shared.db import GroupCommit
from berth_shared.faults import checkpoint
from berth_shared.messages.provisioner import Volume

log = logging.getLogger(__name__)
V = VolumeStatus


class VolumeOps:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._finisher: GroupCommit[dict[str, Any], Volume | None] = GroupCommit(
            ctx.db, self._finish_creates, name="volume-create-finish"
        )
        runner = ctx.runner
        runner.register("volume.create", self.create_do, self.create_finish, self.create_fail)
        runner.register("volume.delete", self.delete_do, self.delete_finish, self.delete_fail)
        runner.register("volume.expand", self.expand_do, self.expand_finish, self.expand_fail)

    async def _volume_in(self, op: dict[str, Any], status: str) -> Row[Any] | None:
        """The operation's volume if it is (still) in `status`, else None."""
        async with self.ctx.db.reads() as s:
            vol = await repo.volumes.by_id(s, None, op["params"]["volume_id"])
        return vol if vol is not None and vol.status == status else None

    async def _emit(self, s: AsyncSession, vol: Row[Any], verb: str, extra: dict[str, Any] | None = None) -> None:
        data = repo.volumes.out(vol).model_dump(mode="json") | (extra or {})
        await self.ctx.events.emit(s, vol.tenant, "volume", verb, vol.id, data)

    # -- create --------------------------------------------------------------------

    async def create_do(self, op: dict[str, Any]) -> None:
        # A create this replica has just recorded comes with its row as committed (nothing
        # but this operation moves a creating volume): no read back. Else, read it.
        vol = self.ctx.recorded.take(op["params"]["volume_id"])
        if vol is None:
            row = await self._volume_in(op, V.CREATING)
            if row is None:
                return
            vol = dict(row._mapping)
        vid, tenant = vol["id"], vol["tenant"]
        backend = await self.ctx.backend_for(vol["cluster_id"])
        size = vol["size_gib"] * GIB
        # The tenant goes along: CephFS keeps each tenant's volumes in its own subvolume group.
        if vol["source_snapshot_id"]:
            await backend.create_volume_from_snapshot(vid, vol["source_snapshot_id"], size, tenant=tenant)
        elif vol["source_volume_id"]:
            await backend.clone_volume(vid, vol["source_volume_id"], size, tenant=tenant)
        else:
            await backend.create_volume(vid, size, tenant=tenant)
        checkpoint("volume.create.after_backend")

    async def create_finish(self, op: dict[str, Any]) -> bool:
        # Creates finishing together share one transaction (and its commit).
        vol = await self._finisher.submit(op)
        if vol is not None:
            self.ctx.finished.put(vol.id, vol)
        self.ctx.events.notify()
        return True

    async def _finish_creates(self, s: AsyncSession, ops: list[dict[str, Any]]) -> list[Volume | None]:
        """The volumes made available with their events; their operations close in the same
        transaction (one commit less per create). Three statements for the whole batch:
        one UPDATE ... RETURNING of the volumes, one INSERT of their events, one UPDATE of
        the operations (the lease renewer skips the operation rows this holds: no
        deadlock). The one `Volume` per row is both the event's data and the answer."""
        ids = [str(op["params"]["volume_id"]) for op in ops]
        moved = {row.id: repo.volumes.out(row) for row in await repo.volumes.move_all(s, ids, V.CREATING, "created")}
        events = [(vol.tenant, "volume", "created", vol.id, vol.model_dump(mode="json")) for vol in moved.values()]
        await self.ctx.events.emit_many(s, events)
        await self.ctx.runner.mark_all_done(s, [op["id"] for op in ops])
        return [moved.get(vid) for vid in ids]

    async def create_fail(self, op: dict[str, Any], why: str) -> None:
        """Roll back: remove whatever the backend made, the record, and the reservations."""
        vol = await self._volume_in(op, V.CREATING)
        if vol is None:
            return
        try:
            await (await self.ctx.backend_for(vol.cluster_id)).delete_volume(vol.id)
        except BackendError as exc:
            log.warning("rollback of %s could not remove its backend file (the watcher will): %s", vol.id, exc)
        async with self.ctx.db.transaction() as s:
            if await repo.volumes.move(s, vol.id, V.CREATING, "create_failed"):
                await repo.accounting.release_volume(s, vol)
                await self._emit(s, vol, "create_failed", {"status": "error", "error": why})
        self.ctx.events.notify()

    # -- delete --------------------------------------------------------------------

    async def delete_do(self, op: dict[str, Any]) -> None:
        vol = await self._volume_in(op, V.DELETING)
        if vol is None:
            return
        await (await self.ctx.backend_for(vol.cluster_id)).delete_volume(vol.id)
        checkpoint("volume.delete.after_backend")

    async def delete_finish(self, op: dict[str, Any]) -> None:
        vid = op["params"]["volume_id"]
        async with self.ctx.db.transaction() as s:
            vol = await repo.volumes.by_id(s, None, vid)
            if vol is None or vol.status != V.DELETING:
                return
            if await repo.volumes.move(s, vid, V.DELETING, "deleted"):
                await repo.accounting.release_volume(s, vol)
                await self._emit(s, vol, "deleted")
        self.ctx.events.notify()

    async def delete_fail(self, op: dict[str, Any], why: str) -> None:
        async with self.ctx.db.transaction() as s:
            await repo.volumes.move(s, op["params"]["volume_id"], V.DELETING, "delete_failed")

    # -- expand --------------------------------------------------------------------

    async def expand_do(self, op: dict[str, Any]) -> None:
        vol = await self._volume_in(op, V.EXPANDING)
        if vol is None:
            return
        await (await self.ctx.backend_for(vol.cluster_id)).expand_volume(vol.id, op["params"]["size_gib"] * GIB)

    async def expand_finish(self, op: dict[str, Any]) -> None:
        vid = op["params"]["volume_id"]
        async with self.ctx.db.transaction() as s:
            vol = await repo.volumes.move(s, vid, V.EXPANDING, "expanded", size_gib=op["params"]["size_gib"])
            if vol is not None:
                await self._emit(s, vol, "expanded")
        self.ctx.events.notify()

    async def expand_fail(self, op: dict[str, Any], why: str) -> None:
        vid = op["params"]["volume_id"]
        async with self.ctx.db.transaction() as s:
            vol = await repo.volumes.by_id(s, None, vid)
            if await repo.volumes.move(s, vid, V.EXPANDING, "expand_failed") and vol is not None:
                await repo.accounting.release_growth(s, vol, op["params"]["size_gib"] - op["params"]["from_gib"])

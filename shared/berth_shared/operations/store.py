"""The operation runner's database I/O, over any table with the operation columns: `id`,
`state` ("pending" while it runs, then "done" or "failed"), `owner`, `lease_until`,
`attempts` (claims so far) and `error`; `updated_at` is kept when the table has one.

Every write is a conditional UPDATE on the state (and for a claim, on the lease), so two
replicas racing for one operation cannot both take it, and a finished one stays finished.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.db import Database, affected

PENDING = "pending"
DONE = "done"
FAILED = "failed"


class OperationStore:
    def __init__(self, db: Database, table: Table) -> None:
        self.db = db
        self.table = table
        self._c = table.c
        self._touch = "updated_at" in table.c
        # Built once: every finish runs it.
        c = self._c
        values: dict[str, Any] = {
            "state": bindparam("p_state", type_=c.state.type),
            "error": bindparam("p_error", type_=c.error.type),
            "lease_until": None,
        }
        if self._touch:
            values["updated_at"] = bindparam("p_at", type_=c.updated_at.type)
        self._close = (
            update(table).where(c.id.in_(bindparam("p_ids", expanding=True)), c.state == PENDING).values(**values)
        )

    def _claimable(self, me: str, at: datetime) -> Any:
        # The SQL form of policy.may_claim.
        c = self._c
        return or_(c.owner == me, c.lease_until.is_(None), c.lease_until < at)

    async def claim(self, op_id: str, me: str, at: datetime, until: datetime) -> dict[str, Any] | None:
        """Take (or keep) a pending operation, counting the attempt; its row, or None when
        it is finished or another owner's lease still runs."""
        c = self._c
        async with self.db.transaction() as s:
            res = await s.execute(
                update(self.table)
                .where(c.id == op_id, c.state == PENDING, self._claimable(me, at))
                .values(owner=me, lease_until=until, attempts=c.attempts + 1)
            )
            if affected(res) != 1:
                return None
            return dict((await s.execute(select(self.table).where(c.id == op_id))).one()._mapping)

    async def claimable(self, me: str, at: datetime) -> list[str]:
        """Pending operations `me` may take now."""
        c = self._c
        async with self.db.sessions() as s:
            q = select(c.id).where(c.state == PENDING, self._claimable(me, at))
            return list((await s.execute(q)).scalars())

    async def renew(self, op_ids: Collection[str], me: str, until: datetime) -> set[str]:
        """Extend `me`'s leases on these operations; the ones still pending and held by
        someone else (taken over: `me`'s lease had lapsed) come back, to be stopped here."""
        c = self._c
        # SKIP LOCKED: a row another transaction holds is being closed (a finish marks
        # several operations done in one transaction): waiting for it could deadlock
        # with that transaction, and it needs no renewal. (SQLite: no row locks to skip.)
        held = select(c.id).where(c.id.in_(op_ids), c.state == PENDING, c.owner == me).with_for_update(skip_locked=True)
        async with self.db.transaction() as s:
            res = await s.execute(update(self.table).where(c.id.in_(held.scalar_subquery())).values(lease_until=until))
            if affected(res) == len(op_ids):
                return set()
            q = select(c.id).where(c.id.in_(op_ids), c.state == PENDING, c.owner != me)
            return set((await s.execute(q)).scalars())

    async def state(self, op_id: str) -> tuple[str, str | None] | None:
        """(state, error) of an operation, None when there is no such row."""
        c = self._c
        async with self.db.sessions() as s:
            row = (await s.execute(select(c.state, c.error).where(c.id == op_id))).first()
        return None if row is None else (str(row.state), row.error)

    async def close_in(self, s: AsyncSession, op_id: str, state: str, error: str | None, at: datetime) -> None:
        """Finish an operation inside the caller's transaction (with the change it made)."""
        await self.close_all_in(s, [op_id], state, error, at)

    async def close_all_in(
        self, s: AsyncSession, op_ids: Collection[str], state: str, error: str | None, at: datetime
    ) -> None:
        """Finish several operations at once inside the caller's transaction (one UPDATE)."""
        ids = list(op_ids)
        if ids:
            await s.execute(self._close, {"p_ids": ids, "p_state": state, "p_error": error, "p_at": at})

    async def close(self, op_id: str, state: str, error: str | None, at: datetime) -> None:
        async with self.db.transaction() as s:
            await self.close_in(s, op_id, state, error, at)

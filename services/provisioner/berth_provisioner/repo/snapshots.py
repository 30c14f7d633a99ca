"""The snapshots table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t
from berth_provisioner.lifecycle import SNAPSHOT
from berth_shared.clock import now
from berth_shared.db import affected
from berth_shared.lifecycle import GONE
from berth_shared.messages.provisioner import Snapshot

c = t.snapshots.c


def out(row: Row[Any]) -> Snapshot:
    return Snapshot.model_validate(row._mapping)


async def by_id(session: AsyncSession, tenant: str | None, snapshot_id: str) -> Row[Any] | None:
    q = select(t.snapshots).where(c.id == snapshot_id)
    if tenant is not None:
        q = q.where(c.tenant == tenant)
    return (await session.execute(q)).first()


async def by_name(session: AsyncSession, tenant: str, name: str) -> Row[Any] | None:
    return (await session.execute(select(t.snapshots).where(c.tenant == tenant, c.name == name))).first()


async def page(
    session: AsyncSession, tenant: str | None, limit: int, after: str | None, volume_id: str | None
) -> list[Row[Any]]:
    """Like volumes.page: `tenant` None lists every tenant's."""
    q = select(t.snapshots).order_by(c.id).limit(limit + 1)
    if tenant is not None:
        q = q.where(c.tenant == tenant)
    if volume_id:
        q = q.where(c.volume_id == volume_id)
    if after:
        q = q.where(c.id > after)
    return list((await session.execute(q)).all())


async def count_of_volume(session: AsyncSession, volume_id: str) -> int:
    q = select(func.count()).select_from(t.snapshots).where(c.volume_id == volume_id)
    return int((await session.execute(q)).scalar_one())


async def insert(session: AsyncSession, **values: Any) -> None:
    await session.execute(t.snapshots.insert().values(**values))


async def move(session: AsyncSession, snapshot_id: str, status: str, event: str) -> bool:
    """Apply the lifecycle's `event` to a snapshot last seen in `status`; False when it has
    moved on meanwhile. A transition to GONE deletes the row."""
    target = SNAPSHOT.target(status, event)
    where = (c.id == snapshot_id, c.status == status)
    if target is GONE:
        res = await session.execute(t.snapshots.delete().where(*where))
    else:
        res = await session.execute(update(t.snapshots).where(*where).values(status=target, updated_at=now()))
    return affected(res) == 1

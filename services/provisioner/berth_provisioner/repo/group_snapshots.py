"""The group_snapshots table, and its members in the snapshots table (moved with it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t
from berth_provisioner.lifecycle import GROUP_SNAPSHOT, SNAPSHOT
from berth_shared.clock import now
from berth_shared.db import affected
from berth_shared.lifecycle import GONE
from berth_shared.messages.provisioner import GroupSnapshot, Snapshot

g = t.group_snapshots.c
sn = t.snapshots.c


def out(row: Row[Any], members: list[Row[Any]]) -> GroupSnapshot:
    by_volume = {m.volume_id: Snapshot.model_validate(m._mapping) for m in members}
    snapshots = [by_volume[v] for v in row.volume_ids if v in by_volume]
    return GroupSnapshot.model_validate(dict(row._mapping) | {"snapshots": snapshots})


async def by_id(session: AsyncSession, tenant: str | None, group_snapshot_id: str) -> Row[Any] | None:
    q = select(t.group_snapshots).where(g.id == group_snapshot_id)
    if tenant is not None:
        q = q.where(g.tenant == tenant)
    return (await session.execute(q)).first()


async def by_name(session: AsyncSession, tenant: str, name: str) -> Row[Any] | None:
    q = select(t.group_snapshots).where(g.tenant == tenant, g.name == name)
    return (await session.execute(q)).first()


async def page(session: AsyncSession, tenant: str, limit: int, after: str | None) -> list[Row[Any]]:
    """Up to `limit` + 1 group snapshots of a tenant by id after `after`."""
    q = select(t.group_snapshots).where(g.tenant == tenant).order_by(g.id).limit(limit + 1)
    if after:
        q = q.where(g.id > after)
    return list((await session.execute(q)).all())


async def members(session: AsyncSession, group_snapshot_ids: list[str]) -> dict[str, list[Row[Any]]]:
    """The member snapshots of each group snapshot."""
    found: dict[str, list[Row[Any]]] = {gid: [] for gid in group_snapshot_ids}
    if group_snapshot_ids:
        q = select(t.snapshots).where(sn.group_snapshot_id.in_(group_snapshot_ids)).order_by(sn.id)
        for row in (await session.execute(q)).all():
            found[row.group_snapshot_id].append(row)
    return found


async def insert(session: AsyncSession, **values: Any) -> None:
    await session.execute(t.group_snapshots.insert().values(**values))


async def move(session: AsyncSession, group_snapshot_id: str, status: str, event: str) -> bool:
    """Apply the lifecycle's `event` to a group snapshot last seen in `status`, and the same
    event to its members (in the same transaction); False when the group has moved on."""
    target = GROUP_SNAPSHOT.target(status, event)
    where = (g.id == group_snapshot_id, g.status == status)
    if target is GONE:
        res = await session.execute(t.group_snapshots.delete().where(*where))
    else:
        res = await session.execute(update(t.group_snapshots).where(*where).values(status=target, updated_at=now()))
    if affected(res) != 1:
        return False
    member = (sn.group_snapshot_id == group_snapshot_id, sn.status == status)
    if SNAPSHOT.target(status, event) is GONE:
        await session.execute(t.snapshots.delete().where(*member))
    else:
        await session.execute(update(t.snapshots).where(*member).values(status=target, updated_at=now()))
    return True

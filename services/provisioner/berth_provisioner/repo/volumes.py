"""The volumes table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t
from berth_provisioner.lifecycle import VOLUME
from berth_shared.clock import now
from berth_shared.lifecycle import GONE
from berth_shared.messages.provisioner import Volume

v = t.volumes.c


def out(row: Row[Any] | Mapping[str, Any]) -> Volume:
    return Volume.model_validate(row._mapping if isinstance(row, Row) else row, from_attributes=False)


async def by_id(session: AsyncSession, tenant: str | None, volume_id: str, *, lock: bool = False) -> Row[Any] | None:
    """`tenant` None: any tenant's. `lock` takes the row (FOR UPDATE) until the transaction
    ends; SQLite ignores it (it serialises writers anyway)."""
    q = select(t.volumes).where(v.id == volume_id)
    if tenant is not None:
        q = q.where(v.tenant == tenant)
    if lock:
        q = q.with_for_update()
    return (await session.execute(q)).first()


async def by_name(session: AsyncSession, tenant: str, name: str) -> Row[Any] | None:
    return (await session.execute(select(t.volumes).where(v.tenant == tenant, v.name == name))).first()


async def page(session: AsyncSession, tenant: str | None, limit: int, after: str | None) -> list[Row[Any]]:
    """Up to `limit` + 1 volumes of a tenant (None: of every tenant) by id after `after`
    (the extra one says "more")."""
    q = select(t.volumes).order_by(v.id).limit(limit + 1)
    if tenant is not None:
        q = q.where(v.tenant == tenant)
    if after:
        q = q.where(v.id > after)
    return list((await session.execute(q)).all())


async def move(
    session: AsyncSession, volume_id: str, status: str, event: str, *, size_gib_was: int | None = None, **values: Any
) -> Row[Any] | None:
    """Apply the lifecycle's `event` to a volume last seen in `status` (and, if given, of
    `size_gib_was` GiB): the row as it now is (as it was, for a transition to GONE, which
    deletes it), or None when it has moved on meanwhile. RETURNING saves the read after."""
    target = VOLUME.target(status, event)
    where = [v.id == volume_id, v.status == status]
    if size_gib_was is not None:
        where.append(v.size_gib == size_gib_was)
    if target is GONE:
        stmt: Any = t.volumes.delete().where(*where)
    else:
        stmt = update(t.volumes).where(*where).values(status=target, updated_at=now(), **values)
    return (await session.execute(stmt.returning(*t.volumes.c))).first()


# `move_all`'s statements, built once per transition (they run for every finishing batch).
_MOVE_ALL: dict[tuple[str, str], Any] = {}


def _move_all_statement(status: str, target: str) -> Any:
    stmt = _MOVE_ALL.get((status, target))
    if stmt is None:
        stmt = _MOVE_ALL[status, target] = (
            update(t.volumes)
            .where(v.id.in_(bindparam("p_ids", expanding=True)), v.status == status)
            .values(status=target, updated_at=bindparam("p_at", type_=v.updated_at.type))
            .returning(*t.volumes.c)
        )
    return stmt


async def move_all(session: AsyncSession, volume_ids: list[str], status: str, event: str) -> list[Row[Any]]:
    """`move` for several volumes last seen in `status` at once (one UPDATE ... RETURNING):
    the rows that moved, in no particular order (those that had moved on are left out)."""
    target = VOLUME.target(status, event)
    assert target is not GONE, "move_all updates; a deletion goes through move"
    stmt = _move_all_statement(status, target)
    return list((await session.execute(stmt, {"p_ids": volume_ids, "p_at": now()})).all())


async def place(session: AsyncSession, volume_id: str, cluster_id: str, zone: str) -> None:
    """Record the volume on another cluster (placement's first choice filled up meanwhile)."""
    await session.execute(update(t.volumes).where(v.id == volume_id).values(cluster_id=cluster_id, zone=zone))


async def insert_many(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Several volumes in one statement (rows with the same keys)."""
    await session.execute(t.volumes.insert(), rows)


async def retype(session: AsyncSession, volume_id: str, status: str, was: str, to: str) -> Row[Any] | None:
    """Change the type of a volume last seen in `status` with type `was`: the row as it now
    is, or None when it has moved on meanwhile."""
    stmt = (
        update(t.volumes)
        .where(v.id == volume_id, v.status == status, v.volume_type == was)
        .values(volume_type=to, updated_at=now())
    )
    return (await session.execute(stmt.returning(*t.volumes.c))).first()

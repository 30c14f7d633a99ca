"""The operations table, as the use cases see it (the runner in operations.py drives it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t

o = t.operations.c


async def pending(session: AsyncSession, resource_id: str, kind: str) -> str | None:
    """The id of the resource's pending operation of this kind, if there is one."""
    q = select(o.id).where(o.resource_id == resource_id, o.kind == kind, o.state == "pending")
    found: str | None = (await session.execute(q)).scalar()
    return found


async def params(session: AsyncSession, op_id: str) -> dict[str, Any]:
    return dict((await session.execute(select(o.params).where(o.id == op_id))).scalar_one())


async def insert(session: AsyncSession, values: dict[str, Any]) -> None:
    await session.execute(t.operations.insert().values(**values))


async def insert_many(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Several operations in one statement (rows with the same keys)."""
    await session.execute(t.operations.insert(), rows)

"""The quotas table's limits (what is used is kept by accounting.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t
from berth_shared.db import insert_ignore

q = t.quotas.c


async def get(session: AsyncSession, tenant: str) -> Row[Any] | None:
    return (await session.execute(select(t.quotas).where(q.tenant == tenant))).first()


async def ensure(session: AsyncSession, tenant: str, volumes: int, gigabytes: int) -> None:
    """Give a tenant these limits unless it has a quota row already."""
    values = {"tenant": tenant, "volumes": volumes, "gigabytes": gigabytes, "used_volumes": 0, "used_gigabytes": 0}
    await insert_ignore(session, t.quotas, values)


async def set_limits(session: AsyncSession, tenant: str, volumes: int, gigabytes: int) -> Row[Any]:
    await ensure(session, tenant, volumes, gigabytes)
    await session.execute(update(t.quotas).where(q.tenant == tenant).values(volumes=volumes, gigabytes=gigabytes))
    row = await get(session, tenant)
    assert row is not None
    return row

"""The volume_types table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t
from berth_shared.db import insert_ignore

c = t.volume_types.c


async def names(session: AsyncSession) -> set[str]:
    return set((await session.execute(select(c.name))).scalars())


async def by_name(session: AsyncSession, name: str) -> Row[Any] | None:
    return (await session.execute(select(t.volume_types).where(c.name == name))).first()


async def all_rows(session: AsyncSession) -> list[Row[Any]]:
    return list((await session.execute(select(t.volume_types).order_by(c.name))).all())


async def insert(session: AsyncSession, name: str, description: str, *, if_missing: bool = False) -> None:
    if if_missing:
        await insert_ignore(session, t.volume_types, {"name": name, "description": description})
    else:
        await session.execute(t.volume_types.insert().values(name=name, description=description))

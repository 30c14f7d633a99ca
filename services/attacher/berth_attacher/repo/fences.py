"""The fences table: one row per fence of a node (its epoch), its targets and results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_attacher import tables as t
from berth_attacher.lifecycle import FENCE, FenceState
from berth_shared.clock import now
from berth_shared.db import affected

f = t.fences.c


async def of_epoch(session: AsyncSession, node_id: str, epoch: int) -> Row[Any] | None:
    return (await session.execute(select(t.fences).where(f.node_id == node_id, f.epoch == epoch))).first()


async def listing(session: AsyncSession, node_id: str | None) -> list[Row[Any]]:
    q = select(t.fences).order_by(f.created_at)
    if node_id:
        q = q.where(f.node_id == node_id)
    return list((await session.execute(q)).all())


async def started_since(session: AsyncSession, since: datetime) -> list[datetime]:
    return list((await session.execute(select(f.created_at).where(f.created_at >= since))).scalars())


async def insert(session: AsyncSession, **values: Any) -> None:
    await session.execute(t.fences.insert().values(**values))


async def complete(session: AsyncSession, fence_id: str, results: dict[str, list[str]]) -> bool:
    """Record a fence done, once: False when it already was."""
    res = await session.execute(
        update(t.fences)
        .where(f.id == fence_id, f.state == FenceState.PENDING)
        .values(
            state=FENCE.target(FenceState.PENDING, "completed"), results=results, completed_at=now(), lease_until=None
        )
    )
    return affected(res) == 1


async def mark_unfenced(session: AsyncSession, node_id: str) -> None:
    await session.execute(
        update(t.fences).where(f.node_id == node_id, f.unfenced_at.is_(None)).values(unfenced_at=now())
    )

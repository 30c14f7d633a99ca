"""The nodes table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_attacher import tables as t
from berth_attacher.lifecycle import NODE
from berth_shared.clock import now
from berth_shared.db import affected
from berth_shared.messages.attacher import Node

n = t.nodes.c


def out(row: Row[Any]) -> Node:
    return Node.model_validate(row._mapping)


async def get(session: AsyncSession, node_id: str, *, lock: bool = False) -> Row[Any] | None:
    """`lock`: the row stays locked (FOR UPDATE; SQLite serialises writers anyway) until the
    transaction ends, so no fence, grant or heartbeat of this node interleaves."""
    q = select(t.nodes).where(n.id == node_id)
    if lock:
        q = q.with_for_update()
    return (await session.execute(q)).first()


async def all_rows(session: AsyncSession, states: Iterable[str] | None = None) -> list[Row[Any]]:
    q = select(t.nodes).order_by(n.id)
    if states is not None:
        q = q.where(n.state.in_(list(states)))
    return list((await session.execute(q)).all())


async def count_in(session: AsyncSession, states: Iterable[str]) -> int:
    q = select(func.count()).select_from(t.nodes).where(n.state.in_(list(states)))
    return int((await session.execute(q)).scalar_one())


async def insert(session: AsyncSession, **values: Any) -> None:
    await session.execute(t.nodes.insert().values(**values))


async def change(session: AsyncSession, node_id: str, **values: Any) -> bool:
    """Change fields other than the state (heartbeat data, signals, the taint flag)."""
    res = await session.execute(update(t.nodes).where(n.id == node_id).values(**values, updated_at=now()))
    return affected(res) == 1


async def move(session: AsyncSession, node_id: str, state: str, event: str, **values: Any) -> bool:
    """Apply the lifecycle's `event` to a node last seen in `state`; False when it has moved
    on meanwhile."""
    target = NODE.target(state, event)
    res = await session.execute(
        update(t.nodes).where(n.id == node_id, n.state == state).values(state=target, updated_at=now(), **values)
    )
    return affected(res) == 1

"""The attachments table (the grants) and the per-volume generation counter."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_attacher import tables as t
from berth_attacher.lifecycle import ATTACHMENT, AttachmentState
from berth_shared.clock import now
from berth_shared.messages.attacher import Attachment

a = t.attachments.c
vg = t.volume_generations.c


def out(row: Row[Any]) -> Attachment:
    return Attachment.model_validate(row._mapping)


async def lock_volume(session: AsyncSession, volume_id: str) -> None:
    """Serialise grants per volume until the transaction ends. SQLite already serialises
    writers (BEGIN IMMEDIATE)."""
    if session.get_bind().dialect.name != "sqlite":
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:v))"), {"v": volume_id})


async def of_volume(session: AsyncSession, volume_id: str) -> list[Row[Any]]:
    return list((await session.execute(select(t.attachments).where(a.volume_id == volume_id))).all())


async def get(session: AsyncSession, attachment_id: str) -> Row[Any]:
    return (await session.execute(select(t.attachments).where(a.id == attachment_id))).one()


async def of_volume_on(session: AsyncSession, volume_id: str, node_id: str) -> Row[Any] | None:
    q = select(t.attachments).where(a.volume_id == volume_id, a.node_id == node_id)
    return (await session.execute(q)).first()


async def on_node(session: AsyncSession, node_id: str, state: str) -> list[Row[Any]]:
    q = select(t.attachments).where(a.node_id == node_id, a.state == state)
    return list((await session.execute(q)).all())


async def count_on_node(session: AsyncSession, node_id: str, state: str) -> int:
    q = select(func.count()).select_from(t.attachments).where(a.node_id == node_id, a.state == state)
    return int((await session.execute(q)).scalar_one())


async def query(
    session: AsyncSession, tenant: str | None, volume_id: str | None, node_id: str | None
) -> list[Row[Any]]:
    q = select(t.attachments).order_by(a.created_at, a.id)
    if tenant is not None:
        q = q.where(a.tenant == tenant)
    if volume_id:
        q = q.where(a.volume_id == volume_id)
    if node_id:
        q = q.where(a.node_id == node_id)
    return list((await session.execute(q)).all())


async def page(session: AsyncSession, limit: int, after: str | None) -> list[Row[Any]]:
    """Up to `limit` + 1 grants of every tenant by id after `after` (the extra one says "more")."""
    q = select(t.attachments).order_by(a.id).limit(limit + 1)
    if after:
        q = q.where(a.id > after)
    return list((await session.execute(q)).all())


async def insert(session: AsyncSession, **values: Any) -> None:
    await session.execute(t.attachments.insert().values(**values))


async def replace(session: AsyncSession, attachment_id: str, **values: Any) -> None:
    """A released grant to a node becomes a new grant to it (same row, new generation)."""
    await session.execute(update(t.attachments).where(a.id == attachment_id).values(**values))


async def remove(session: AsyncSession, attachment_id: str) -> None:
    await session.execute(delete(t.attachments).where(a.id == attachment_id))


async def release_node(session: AsyncSession, node_id: str) -> None:
    """Every grant the node holds becomes released (its fence has completed)."""
    await session.execute(
        update(t.attachments)
        .where(a.node_id == node_id, a.state == AttachmentState.ATTACHED)
        .values(state=ATTACHMENT.target(AttachmentState.ATTACHED, "released"), updated_at=now())
    )


async def next_generation(session: AsyncSession, volume_id: str) -> int:
    """One more than the highest generation ever granted for the volume (never reused)."""
    current = (await session.execute(select(vg.generation).where(vg.volume_id == volume_id))).scalar()
    if current is None:
        await session.execute(t.volume_generations.insert().values(volume_id=volume_id, generation=1))
        return 1
    await session.execute(update(t.volume_generations).where(vg.volume_id == volume_id).values(generation=current + 1))
    return int(current) + 1

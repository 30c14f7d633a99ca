"""The clusters table: the registry of storage clusters (their room is in accounting.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from berth_provisioner import tables as t
from berth_provisioner.placement import ClusterView
from berth_shared.clock import now
from berth_shared.db import affected
from berth_shared.messages.provisioner import Cluster

c = t.clusters.c
_ALL = select(t.clusters).order_by(c.name)  # built once: every create reads it


def out(row: Row[Any], backend_total: int | None = None, backend_free: int | None = None) -> Cluster:
    m = dict(row._mapping)
    m.pop("config", None)
    m.pop("updated_at", None)
    return Cluster.model_validate({**m, "backend_total_bytes": backend_total, "backend_free_bytes": backend_free})


def view(row: Row[Any], free_fraction: float | None = None) -> ClusterView:
    return ClusterView(
        id=row.id,
        name=row.name,
        volume_types=tuple(row.volume_types),
        zone=row.zone,
        state=row.state,
        capacity_gib=row.capacity_gib,
        overcommit_ratio=row.overcommit_ratio,
        provisioned_gib=row.provisioned_gib,
        free_floor_pct=row.free_floor_pct,
        allowed_tenants=tuple(row.allowed_tenants) if row.allowed_tenants is not None else None,
        backend_free_fraction=free_fraction,
    )


async def all_rows(session: AsyncSession | AsyncConnection, only: str | None = None) -> list[Row[Any]]:
    """Every cluster by name (or just `only`, by id)."""
    q = _ALL if only is None else _ALL.where(c.id == only)
    return list((await session.execute(q)).all())


async def by_id(session: AsyncSession, cluster_id: str) -> Row[Any] | None:
    return (await session.execute(select(t.clusters).where(c.id == cluster_id))).first()


async def by_name(session: AsyncSession, name: str) -> Row[Any] | None:
    return (await session.execute(select(t.clusters).where(c.name == name))).first()


async def count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(t.clusters))).scalar_one())


async def insert(session: AsyncSession, **values: Any) -> None:
    await session.execute(t.clusters.insert().values(provisioned_gib=0, volume_count=0, **values))


async def change(session: AsyncSession, cluster_id: str, **changes: Any) -> bool:
    res = await session.execute(update(t.clusters).where(c.id == cluster_id).values(**changes, updated_at=now()))
    return affected(res) == 1

"""Row <-> message conversion and the small queries the provisioner repeats."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t
from berth_provisioner.placement import ClusterView
from berth_shared.messages.provisioner import Cluster, Snapshot, Volume


def volume_out(row: Row[Any]) -> Volume:
    return Volume.model_validate(row._mapping, from_attributes=False)


def snapshot_out(row: Row[Any]) -> Snapshot:
    return Snapshot.model_validate(row._mapping)


def cluster_out(row: Row[Any], backend_total: int | None = None, backend_free: int | None = None) -> Cluster:
    m = dict(row._mapping)
    m.pop("config", None)
    m.pop("updated_at", None)
    return Cluster.model_validate({**m, "backend_total_bytes": backend_total, "backend_free_bytes": backend_free})


def cluster_view(row: Row[Any], free_fraction: float | None = None) -> ClusterView:
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


async def insert_ignore(session: AsyncSession, table: Table, values: dict[str, Any]) -> None:
    """INSERT that does nothing when the row exists (both dialects)."""
    ins: Any = (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)
    await session.execute(ins.values(**values).on_conflict_do_nothing())


async def volume_by_id(
    session: AsyncSession, tenant: str | None, volume_id: str, *, lock: bool = False
) -> Row[Any] | None:
    """`lock` takes the row (FOR UPDATE) until the transaction ends; SQLite ignores it."""
    q = select(t.volumes).where(t.volumes.c.id == volume_id)
    if tenant is not None:
        q = q.where(t.volumes.c.tenant == tenant)
    if lock:
        q = q.with_for_update()
    return (await session.execute(q)).first()


async def volume_by_name(session: AsyncSession, tenant: str, name: str) -> Row[Any] | None:
    q = select(t.volumes).where(t.volumes.c.tenant == tenant, t.volumes.c.name == name)
    return (await session.execute(q)).first()


async def snapshot_by_id(session: AsyncSession, tenant: str | None, snapshot_id: str) -> Row[Any] | None:
    q = select(t.snapshots).where(t.snapshots.c.id == snapshot_id)
    if tenant is not None:
        q = q.where(t.snapshots.c.tenant == tenant)
    return (await session.execute(q)).first()


async def snapshot_by_name(session: AsyncSession, tenant: str, name: str) -> Row[Any] | None:
    q = select(t.snapshots).where(t.snapshots.c.tenant == tenant, t.snapshots.c.name == name)
    return (await session.execute(q)).first()

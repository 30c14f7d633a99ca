"""Quota and cluster-capacity accounting: what each tenant uses and each cluster holds.

Every change is a conditional UPDATE (`used + asked <= limit`), so concurrent creates and
expands cannot overshoot a quota or a cluster, and usage counts reservations too: the
limits hold while creates are in flight. A rollback gives back exactly what was taken.

The statements are built once with bound parameters: every create runs two of them, and
building (and cache-keying) an UPDATE per call cost more CPU than executing it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, Row, String, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t
from berth_provisioner.repo import quotas
from berth_shared.db import affected
from berth_shared.errors import ResourceExhausted

q = t.quotas.c
c = t.clusters.c

# Bound parameters carry a `p_` prefix: a bindparam named like a column it sets collides.
_N, _GIB = bindparam("p_volumes", type_=Integer), bindparam("p_gib", type_=Integer)
_TENANT, _CLUSTER = bindparam("p_tenant", type_=String), bindparam("p_cluster", type_=String)
_RESERVE = (
    update(t.quotas)
    .where(q.tenant == _TENANT, q.used_volumes + _N <= q.volumes, q.used_gigabytes + _GIB <= q.gigabytes)
    .values(used_volumes=q.used_volumes + _N, used_gigabytes=q.used_gigabytes + _GIB)
)
_RELEASE = (
    update(t.quotas)
    .where(q.tenant == _TENANT)
    .values(used_volumes=q.used_volumes - _N, used_gigabytes=q.used_gigabytes - _GIB)
)
_ROOM = c.provisioned_gib + _GIB <= c.capacity_gib * c.overcommit_ratio
_TAKE = (
    update(t.clusters)
    .where(c.id == _CLUSTER, _ROOM)
    .values(provisioned_gib=c.provisioned_gib + _GIB, volume_count=c.volume_count + _N)
)
_TAKE_ACTIVE = _TAKE.where(c.state == "active")
_GIVE_BACK = (
    update(t.clusters)
    .where(c.id == _CLUSTER)
    .values(provisioned_gib=c.provisioned_gib - _GIB, volume_count=c.volume_count - _N)
)


async def reserve_quota(
    session: AsyncSession, tenant: str, volumes: int, gigabytes: int, default: tuple[int, int]
) -> None:
    """Count `volumes` and `gigabytes` against the tenant's quota (a tenant seen for the
    first time gets `default` (volumes, gigabytes)); ResourceExhausted when over it."""
    params = {"p_tenant": tenant, "p_volumes": volumes, "p_gib": gigabytes}
    if affected(await session.execute(_RESERVE, params)) == 1:
        return
    await quotas.ensure(session, tenant, *default)
    if affected(await session.execute(_RESERVE, params)) == 1:
        return
    row = await quotas.get(session, tenant)
    assert row is not None
    raise ResourceExhausted(
        f"quota exceeded for tenant {tenant}: {row.used_volumes}/{row.volumes} volumes, "
        f"{row.used_gigabytes}/{row.gigabytes} GiB in use, {volumes} volume(s) and {gigabytes} GiB asked",
        reason="quota_exceeded",
    )


async def release_quota(session: AsyncSession, tenant: str, volumes: int, gigabytes: int) -> None:
    await session.execute(_RELEASE, {"p_tenant": tenant, "p_volumes": volumes, "p_gib": gigabytes})


async def take_room(session: AsyncSession, cluster_id: str, gib: int, volumes: int, *, active_only: bool) -> bool:
    """Count `gib` (and `volumes`) on a cluster if it stays under its overcommit limit (and,
    with `active_only`, only while the cluster is active); False when it would not."""
    res = await session.execute(
        _TAKE_ACTIVE if active_only else _TAKE, {"p_cluster": cluster_id, "p_gib": gib, "p_volumes": volumes}
    )
    return affected(res) == 1


async def give_back_room(session: AsyncSession, cluster_id: str, gib: int, volumes: int) -> None:
    await session.execute(_GIVE_BACK, {"p_cluster": cluster_id, "p_gib": gib, "p_volumes": volumes})


async def reserve_growth(session: AsyncSession, vol: Row[Any], delta_gib: int, default_quota: tuple[int, int]) -> None:
    """Room for a volume to grow by `delta_gib`: in its tenant's quota and on its cluster."""
    await reserve_quota(session, vol.tenant, 0, delta_gib, default_quota)
    if not await take_room(session, vol.cluster_id, delta_gib, 0, active_only=False):
        raise ResourceExhausted(
            f"the volume's storage cluster has no room for {delta_gib} GiB more", reason="cluster_full"
        )


async def release_growth(session: AsyncSession, vol: Row[Any], delta_gib: int) -> None:
    await release_quota(session, vol.tenant, 0, delta_gib)
    await give_back_room(session, vol.cluster_id, delta_gib, 0)


async def release_volume(session: AsyncSession, vol: Row[Any]) -> None:
    """Everything a volume held: its quota and its room on its cluster."""
    await release_quota(session, vol.tenant, 1, vol.size_gib)
    await give_back_room(session, vol.cluster_id, vol.size_gib, 1)

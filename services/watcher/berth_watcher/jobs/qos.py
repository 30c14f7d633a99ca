"""The QoS job: size-scaled limits per volume type, applied through each volume's backend.

Every run recomputes what each volume should have from its current size and type, so a
resize or a type change is applied by the next run (and the provisioner's expanded /
retyped events queue one at once). A budget of volumes per run is read back from the
storage, oldest check first, so a limit changed behind the watcher's back is found and
put back. The IO counters of each backend give each volume's load; a volume whose load
reaches its limit is a `qos_saturated` finding: who causes the load.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, update

from berth_shared.backends import IoCounters, QosLimits, QosState
from berth_shared.errors import BerthError
from berth_shared.messages.watcher import QosDrift, QosPolicySet
from berth_watcher import qos, store
from berth_watcher import tables as t
from berth_watcher.context import Context
from berth_watcher.findings import plan
from berth_watcher.leader import LeadershipLost
from berth_watcher.model import Cluster, Observation, Volume
from berth_watcher.sources.inventory import gather_limited

log = logging.getLogger(__name__)


async def policies(ctx: Context) -> dict[str, QosPolicySet]:
    async with ctx.db.sessions() as s:
        rows = (await s.execute(select(t.qos_policies))).all()
    return {r.volume_type: QosPolicySet.model_validate(r.spec) for r in rows}


async def run(ctx: Context) -> None:
    clusters, report = await ctx.sources.inventory.clusters()
    ctx.note(report)
    volumes, report = await ctx.sources.inventory.volumes()
    ctx.note(report)
    if clusters is None or volumes is None:
        return
    by_cluster = {c.id: c for c in clusters}
    counters: dict[str, dict[str, IoCounters] | None] = {}
    for c in clusters:
        try:
            counters[c.id] = await ctx.sources.backends.of(c).io_counters()
        except Exception as exc:  # the load is unknown there; limits still apply
            counters[c.id] = None
            log.warning("qos: io counters of %s: %s", c.name, exc)
    wanted_by_type = await policies(ctx)
    async with ctx.db.sessions() as s:
        state = {r.volume_id: r for r in (await s.execute(select(t.qos_state))).all()}
    at = store.now()
    live = [v for v in volumes if v.status in ("available", "expanding") and v.cluster_id in by_cluster]
    observations: list[Observation] = []
    changes: list[tuple[Volume, QosLimits]] = []
    loads: list[dict[str, Any]] = []
    for v in live:
        policy = wanted_by_type.get(v.volume_type)
        wanted = qos.limits_for(policy, v.size_gib)
        row = state.get(v.id)
        if row is None and wanted.unlimited:
            continue  # never limited, nothing wanted: nothing to do
        # Also a new size or type with the same limits: the record says what the volume is.
        if row is None or (row.wanted, row.size_gib, row.volume_type) != (wanted.as_dict(), v.size_gib, v.volume_type):
            changes.append((v, wanted))
        found = (counters.get(v.cluster_id) or {}).get(v.id)
        if row is not None and found is not None:
            sample = qos.Sample(at, found)
            rates = qos.load(qos.Sample.from_json(row.sample) if row.sample else None, sample)
            limits = QosLimits.from_dict(row.applied)
            hot = qos.at_limit(rates, limits, policy.saturation_pct if policy else 90.0) if row.enforced else {}
            loads.append({"vid": v.id, "s_sample": sample.to_json(), "s_load": rates, "s_saturated": bool(hot)})
            if hot:
                observations.append(_saturated(v, hot, rates))
    await _store_loads(ctx, loads)
    evaluated = {f"qos_saturated:{cid}" for cid, found in counters.items() if found is not None}
    sightings, open_findings = await store.load_state(ctx.db, ["qos_saturated"])
    p = plan(observations, evaluated, sightings, open_findings, at, ctx.settings.grace)
    ctx.result.opened, ctx.result.resolved = await store.apply_plan(
        ctx.db, ctx.events, ctx.run_id, p, ctx.settings.action
    )
    ctx.result.summary.update(volumes=len(live), policies=len(wanted_by_type), saturated=len(observations))
    if ctx.result.partial:
        return
    try:
        await _apply(ctx, changes, by_cluster)
        await _check_drift(ctx, {v.id: v for v in live}, by_cluster, {v.id for v, _ in changes})
        await _forget(ctx, {v.id for v in volumes})
    except LeadershipLost as exc:
        ctx.result.error = f"stopped acting: {exc}"
    await _gauges(ctx)


def _saturated(v: Volume, hot: dict[str, str], rates: dict[str, float] | None) -> Observation:
    return Observation(
        kind="qos_saturated",
        key=f"qos_saturated:{v.id}",
        scope=f"qos_saturated:{v.cluster_id}",
        severity="warning",
        resource_kind="volume",
        resource_id=v.id,
        tenant=v.tenant,
        cluster_id=v.cluster_id,
        details={"at_limit": ", ".join(f"{k} {val}" for k, val in sorted(hot.items())), "load": rates or {}},
    )


async def _store_loads(ctx: Context, loads: list[dict[str, Any]]) -> None:
    """Every measured volume's sample, rates and saturation: one statement for them all."""
    if not loads:
        return
    c = t.qos_state.c
    stmt = (
        update(t.qos_state)
        .where(c.volume_id == bindparam("vid"))
        .values(sample=bindparam("s_sample"), load=bindparam("s_load"), saturated=bindparam("s_saturated"))
    )
    async with ctx.db.transaction() as s:
        await s.execute(stmt, loads)


async def _record(ctx: Context, v: Volume, wanted: QosLimits, held: QosState, at: datetime) -> None:
    values: dict[str, Any] = {
        "tenant": v.tenant,
        "cluster_id": v.cluster_id,
        "volume_type": v.volume_type,
        "size_gib": v.size_gib,
        "wanted": wanted.as_dict(),
        "applied": held.limits.as_dict(),
        "enforced": held.enforced,
        "detail": held.detail,
        "checked_at": at,
        "updated_at": at,
    }
    async with ctx.db.transaction() as s:
        await ctx.check(s)
        res = await s.execute(update(t.qos_state).where(t.qos_state.c.volume_id == v.id).values(**values))
        if res.rowcount == 0:  # type: ignore[attr-defined]
            await s.execute(t.qos_state.insert().values(volume_id=v.id, saturated=False, **values))


async def _apply(ctx: Context, changes: list[tuple[Volume, QosLimits]], clusters: dict[str, Cluster]) -> None:
    async def one(v: Volume, wanted: QosLimits) -> None:
        try:
            held = await ctx.sources.backends.of(clusters[v.cluster_id]).set_qos(v.id, wanted)
        except BerthError as exc:
            ctx.result.act("qos_apply", v.id, "failed", exc.detail)
            ctx.metrics.actions.labels("qos_apply", "failed").inc()
            return
        await _record(ctx, v, wanted, held, store.now())
        detail = f"{wanted.as_dict() or 'unlimited'}; {'enforced' if held.enforced else held.detail}"
        ctx.result.act("qos_apply", v.id, "done", detail)
        ctx.metrics.actions.labels("qos_apply", "done").inc()

    await gather_limited([lambda v=v, w=w: one(v, w) for v, w in changes], limit=8)  # type: ignore[misc]


async def _check_drift(
    ctx: Context, live: dict[str, Volume], clusters: dict[str, Cluster], just_applied: set[str]
) -> None:
    """Read back the held limits of the volumes checked longest ago. Where the storage holds
    something else than the last run left, apply the wanted limits again: a **drift** when
    the same place holds other limits (changed behind the watcher's back), a plain apply when
    the place changed (a file volume attached, moved or detached since: a new loop device
    starts unlimited, which is no one's tampering)."""
    budget = ctx.settings.qos_drift_checks_per_run
    async with ctx.db.sessions() as s:
        q = select(t.qos_state).order_by(t.qos_state.c.checked_at.asc().nulls_first())
        rows = [r for r in (await s.execute(q)).all() if r.volume_id in live and r.volume_id not in just_applied]
    in_line: list[str] = []
    for row in rows[:budget]:
        v = live[row.volume_id]
        backend = ctx.sources.backends.of(clusters[v.cluster_id])
        try:
            held = await backend.get_qos(v.id)
        except BerthError as exc:
            ctx.result.act("qos_check", v.id, "failed", exc.detail)
            continue
        if held == QosState(QosLimits.from_dict(row.applied), row.enforced, row.detail):
            in_line.append(v.id)
            continue
        wanted = QosLimits.from_dict(row.wanted)
        if not (row.enforced and held.detail == row.detail):
            await _apply(ctx, [(v, wanted)], clusters)
            continue
        repaired = await backend.set_qos(v.id, wanted)
        await _record(ctx, v, wanted, repaired, store.now())
        drift = QosDrift(
            volume_id=v.id,
            tenant=v.tenant,
            cluster_id=v.cluster_id,
            wanted=wanted.as_dict(),
            found=held.limits.as_dict(),
            enforced=repaired.enforced,
            detail=repaired.detail,
        )
        async with ctx.db.transaction() as s:
            await ctx.events.emit(s, v.tenant, "qos", "drift_repaired", v.id, drift.model_dump(mode="json"))
        ctx.events.notify()
        ctx.result.act("qos_repair", v.id, "done", f"found {held.limits.as_dict()}, put back {wanted.as_dict()}")
        ctx.metrics.actions.labels("qos_repair", "done").inc()
    # The volumes found as they were: checked now (a few statements, not one per volume).
    if not in_line:
        return
    at = store.now()
    async with ctx.db.transaction() as s:
        for i in range(0, len(in_line), 500):
            chunk = in_line[i : i + 500]
            await s.execute(update(t.qos_state).where(t.qos_state.c.volume_id.in_(chunk)).values(checked_at=at))


async def _forget(ctx: Context, existing: set[str]) -> None:
    async with ctx.db.sessions() as s:
        known = set((await s.execute(select(t.qos_state.c.volume_id))).scalars())
    gone = sorted(known - existing)
    if gone:
        async with ctx.db.transaction() as s:
            for i in range(0, len(gone), 500):
                await s.execute(delete(t.qos_state).where(t.qos_state.c.volume_id.in_(gone[i : i + 500])))


async def _gauges(ctx: Context) -> None:
    async with ctx.db.sessions() as s:
        rows = (await s.execute(select(t.qos_state))).all()
    ctx.metrics.qos_volumes.clear()
    ctx.metrics.qos_saturated.clear()
    ctx.metrics.qos_load.clear()
    per: dict[tuple[str, str], int] = {}
    hot: dict[str, int] = {}
    for r in rows:
        if not r.wanted:
            continue
        key = (r.cluster_id, "true" if r.enforced else "false")
        per[key] = per.get(key, 0) + 1
        if r.saturated:
            hot[r.cluster_id] = hot.get(r.cluster_id, 0) + 1
            for rate, value in (r.load or {}).items():
                ctx.metrics.qos_load.labels(r.volume_id, rate).set(value)
    for (cluster, enforced), n in per.items():
        ctx.metrics.qos_volumes.labels(cluster, enforced).set(n)
    for cluster, n in hot.items():
        ctx.metrics.qos_saturated.labels(cluster).set(n)

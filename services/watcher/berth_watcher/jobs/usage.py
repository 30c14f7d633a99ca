"""The usage job: provisioned and used bytes per tenant, cluster and volume type, recorded
as history; per cluster a forecast of the days until its fill threshold, published as an
event every run, and a `capacity_threshold` finding while a cluster is past its threshold
or forecast to reach it within the warning horizon."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select

from berth_shared.bus import SYSTEM_TENANT
from berth_shared.messages.watcher import CapacityForecast
from berth_watcher import store, usage
from berth_watcher import tables as t
from berth_watcher.context import Context
from berth_watcher.findings import plan
from berth_watcher.model import BackendObject, Cluster, Observation

GIB = 1 << 30


async def run(ctx: Context) -> None:
    clusters, report = await ctx.sources.inventory.clusters()
    ctx.note(report)
    volumes, report = await ctx.sources.inventory.volumes()
    ctx.note(report)
    if clusters is None or volumes is None:
        return
    backend, reports = await ctx.sources.read_backends(clusters)
    ctx.note(reports)
    capacities: dict[str, int] = {}
    for c in clusters:
        try:
            capacities[c.id] = (await ctx.sources.backends.of(c).capacity()).total_bytes
        except Exception:
            capacities[c.id] = c.capacity_gib * GIB  # the registered figure stands in
    readable = {c.id for c in clusters if backend.get(c.id) is not None}
    objects: list[BackendObject] = [o for cid in readable for o in backend[cid] or []]
    # A cluster whose backend could not be read has no used figure this run: left out.
    rows = usage.aggregate([v for v in volumes if v.cluster_id in readable], objects)
    at = store.now()
    async with ctx.db.transaction() as s:
        for r in rows:
            await s.execute(
                t.usage_samples.insert().values(
                    at=at,
                    scope=r.scope,
                    key=r.key,
                    volumes=r.volumes,
                    provisioned_bytes=r.provisioned_bytes,
                    used_bytes=r.used_bytes,
                    capacity_bytes=capacities.get(r.key) if r.scope == "cluster" else None,
                )
            )
        retention = at - timedelta(days=ctx.settings.usage_retention_days)
        await s.execute(delete(t.usage_samples).where(t.usage_samples.c.at < retention))
    fitted = await _growth(ctx)
    growth = {k: g for k, (g, _n) in fitted.items()}
    _gauges(ctx, rows, capacities, growth)
    observations: list[Observation] = []
    by_cluster = usage.by_key(rows, "cluster")
    for c in clusters:
        if c.id not in readable:
            continue
        row = by_cluster.get(c.id) or usage.Usage("cluster", c.id)
        g, samples = fitted.get(("cluster", c.id), (None, 0))
        forecast = _forecast(ctx, c, row, capacities[c.id], g, samples)
        ctx.metrics.fill.labels(c.id).set(forecast.fill_ratio)
        days = forecast.days_until_threshold
        ctx.metrics.days_left.labels(c.id).set(-1 if days is None else days)
        async with ctx.db.transaction() as s:
            await s.execute(delete(t.forecasts).where(t.forecasts.c.cluster_id == c.id))
            await s.execute(t.forecasts.insert().values(cluster_id=c.id, data=forecast.model_dump(mode="json"), at=at))
            await ctx.events.emit(s, SYSTEM_TENANT, "capacity", "forecast", c.id, forecast.model_dump(mode="json"))
        ctx.events.notify()
        if forecast.severity != "info":
            observations.append(_threshold(c, forecast))
    sightings, found = await store.load_state(ctx.db, ["capacity_threshold"])
    evaluated = {f"capacity_threshold:{cid}" for cid in readable}
    p = plan(observations, evaluated, sightings, found, at, ctx.settings.grace)
    ctx.result.opened, ctx.result.resolved = await store.apply_plan(
        ctx.db, ctx.events, ctx.run_id, p, ctx.settings.action
    )
    ctx.result.summary.update(rows=len(rows), clusters=len(readable))


async def _growth(ctx: Context) -> dict[tuple[str, str], tuple[float | None, int]]:
    """(growth per day, samples) per (scope, key), fit on the window's history."""
    window = store.now() - timedelta(days=ctx.settings.forecast_window_days)
    c = t.usage_samples.c
    async with ctx.db.sessions() as s:
        found = (await s.execute(select(c.scope, c.key, c.at, c.used_bytes).where(c.at >= window))).all()
    points: dict[tuple[str, str], list[tuple[datetime, int]]] = {}
    for scope, key, when, used in found:
        points.setdefault((scope, key), []).append((when, int(used)))
    return {k: (usage.growth_per_day(v), len(v)) for k, v in points.items()}


def _forecast(
    ctx: Context, c: Cluster, row: usage.Usage, capacity: int, growth: float | None, samples: int
) -> CapacityForecast:
    fill = row.used_bytes / capacity if capacity else 0.0
    threshold = ctx.settings.fill_threshold
    days = usage.days_until(capacity, row.used_bytes, threshold, growth)
    return CapacityForecast(
        cluster_id=c.id,
        cluster_name=c.name,
        backend=c.backend,
        capacity_bytes=capacity,
        used_bytes=row.used_bytes,
        provisioned_bytes=row.provisioned_bytes,
        fill_ratio=round(fill, 4),
        threshold_ratio=threshold,
        growth_bytes_per_day=round(growth, 1) if growth is not None else None,
        days_until_threshold=days,
        samples=samples,
        window_days=ctx.settings.forecast_window_days,
        severity=usage.severity(fill, threshold, days, ctx.settings.forecast_warning_days),
        at=store.now(),
    )


def _threshold(c: Cluster, f: CapacityForecast) -> Observation:
    return Observation(
        kind="capacity_threshold",
        key=f"capacity_threshold:{c.id}",
        scope=f"capacity_threshold:{c.id}",
        severity=f.severity,
        resource_kind="cluster",
        resource_id=c.id,
        cluster_id=c.id,
        details={
            "cluster_name": c.name,
            "fill_ratio": f.fill_ratio,
            "threshold_ratio": f.threshold_ratio,
            "fill_pct": round(f.fill_ratio * 100, 1),
            "threshold_pct": round(f.threshold_ratio * 100, 1),
            "days_until_threshold": f.days_until_threshold,
        },
    )


def _gauges(
    ctx: Context,
    rows: list[usage.Usage],
    capacities: dict[str, int],
    growth: dict[tuple[str, str], float | None],
) -> None:
    m = ctx.metrics
    for gauge in (m.provisioned, m.used, m.volumes, m.overcommit, m.growth):
        gauge.clear()
    for r in rows:
        m.provisioned.labels(r.scope, r.key).set(r.provisioned_bytes)
        m.used.labels(r.scope, r.key).set(r.used_bytes)
        m.volumes.labels(r.scope, r.key).set(r.volumes)
        ratio = usage.thin_ratio(r, capacities.get(r.key) if r.scope == "cluster" else None)
        if ratio is not None:
            m.overcommit.labels(r.scope, r.key).set(ratio)
        g = growth.get((r.scope, r.key))
        if g is not None:
            m.growth.labels(r.scope, r.key).set(g)
    for cid, cap in capacities.items():
        m.capacity.labels(cid).set(cap)

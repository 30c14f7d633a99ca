"""The orphans job: read every inventory, reconcile, record findings, and (only when every
source was read to its end) act on them by policy: quarantine, unpublish, purge.

Reading order matters. Backends first, then Kubernetes, then the provisioner's and
attacher's records: a backend object is made after its record, and a PV after its volume,
so whatever a backend or Kubernetes shows already has its record by the time the records
are read. The reverse order would make every create in between look like a leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import Row, select

from berth_shared.errors import BerthError, NotFound
from berth_shared.messages.attacher import PREFIX as ATTACHER
from berth_shared.messages.provisioner import PREFIX as PROVISIONER
from berth_shared.messages.watcher import FindingKind
from berth_watcher import quarantine as q
from berth_watcher import store
from berth_watcher import tables as t
from berth_watcher.context import Context
from berth_watcher.findings import plan
from berth_watcher.leader import LeadershipLost
from berth_watcher.model import Cluster, Inventory
from berth_watcher.reconcile import reconcile

log = logging.getLogger(__name__)
KINDS: tuple[FindingKind, ...] = (
    "backend_orphan",
    "volume_without_pv",
    "pv_volume_missing",
    "stale_attachment",
    "single_writer_violation",
)
QUARANTINABLE = ("backend_orphan", "volume_without_pv")


async def read_inventory(ctx: Context) -> tuple[Inventory, dict[str, Cluster]]:
    src = ctx.sources
    clusters, report = await src.inventory.clusters()
    ctx.note(report)
    by_id = {c.id: c for c in clusters or []}
    backend, reports = await src.read_backends(clusters or [])
    ctx.note(reports)
    kube, reports = await src.read_kube()
    ctx.note(reports)
    (volumes, r1), (snapshots, r2), (attachments, r3) = await asyncio.gather(
        src.inventory.volumes(), src.inventory.snapshots(), src.inventory.attachments()
    )
    ctx.note([r1, r2, r3])
    return Inventory(volumes, snapshots, attachments, backend, kube), by_id


async def run(ctx: Context) -> None:
    inv, clusters = await read_inventory(ctx)
    rec = reconcile(inv, ctx.settings.csi_driver)
    sightings, found = await store.load_state(ctx.db, KINDS)
    p = plan(rec.observations, rec.evaluated, sightings, found, store.now(), ctx.settings.grace)
    ctx.result.opened, ctx.result.resolved = await store.apply_plan(
        ctx.db, ctx.events, ctx.run_id, p, ctx.settings.action
    )
    ctx.result.summary.update(observed=len(rec.observations), evaluated=sorted(rec.evaluated))
    if ctx.result.partial:
        ctx.result.summary["acted"] = "no: a source was incomplete (partial run)"
        return
    pv_handles = {pv.volume_handle for pv in inv.kube.pvs} if inv.kube else set()
    try:
        await resume(ctx, clusters)
        await quarantine_findings(ctx, clusters, pv_handles)
        await unpublish_stale(ctx)
        await purge_due(ctx, clusters, pv_handles)
    except LeadershipLost as exc:
        ctx.result.error = f"stopped acting: {exc}"


def _budget(ctx: Context) -> int:
    return ctx.settings.max_actions_per_run - sum(1 for a in ctx.result.actions if a.outcome != "skipped")


async def resume(ctx: Context, clusters: dict[str, Cluster]) -> None:
    """Drive on what a crash or a deposed leader left half done."""
    for row in await q.transitional(ctx.db):
        cluster = clusters.get(row.cluster_id)
        if cluster is None:
            ctx.result.act(f"resume {row.state}", row.object_id, "skipped", "its cluster is not registered")
            continue
        backend = ctx.sources.backends.of(cluster)
        try:
            if row.state == "quarantining":
                await q.finish_quarantine(ctx.db, ctx.events, row, backend)
            elif row.state == "restoring":
                await q.finish_restore(ctx.db, ctx.events, row, backend, row.requested_by)
            else:
                await _purge(ctx, row, backend)
            ctx.result.act(f"resume {row.state}", row.object_id, "done")
        except BerthError as exc:
            ctx.result.act(f"resume {row.state}", row.object_id, "failed", exc.detail)


async def _candidates(ctx: Context, kinds: tuple[str, ...], action: str) -> list[Row[Any]]:
    c = t.findings.c
    async with ctx.db.sessions() as s:
        query = select(t.findings).where(c.kind.in_(kinds), c.state == "open")
        rows = (await s.execute(query.order_by(c.confirmed_at))).all()
    return [r for r in rows if r.requested_action == action or r.action == action]


async def _still_orphaned(ctx: Context, finding: Row[Any]) -> str | None:
    """Ask again, just before acting: None if it still holds, else why not."""
    subject = "snapshot.get" if finding.resource_kind == "snapshot" else "volume.get"
    try:
        vol = await ctx.sources.command(f"{PROVISIONER}.{subject}", {"id": finding.resource_id})
    except NotFound:
        return None if finding.kind == "backend_orphan" else "its volume is gone"
    if finding.kind == "backend_orphan":
        return "the provisioner has a record of it now"
    if vol.get("status") not in ("available", "error"):
        return f"the volume is {vol.get('status')}"
    grants = await ctx.sources.command(f"{ATTACHER}.attachment.list", {"volume_id": finding.resource_id})
    if grants["items"]:
        return "the volume is attached now"
    return None


async def quarantine_findings(ctx: Context, clusters: dict[str, Cluster], pv_handles: set[str]) -> None:
    for finding in await _candidates(ctx, QUARANTINABLE, "quarantine"):
        if _budget(ctx) <= 0:
            ctx.result.act("quarantine", finding.resource_id, "skipped", "max_actions_per_run reached")
            break
        cluster = clusters.get(finding.cluster_id or "")
        why = None
        if cluster is None:
            why = "its cluster is not registered"
        elif finding.resource_id in pv_handles:
            why = "a PersistentVolume references it"
        elif not finding.details.get("actionable"):
            why = "not actionable (in use, referenced, or with snapshots)"
        else:
            why = await _still_orphaned(ctx, finding)
        if why is not None or cluster is None:
            ctx.result.act("quarantine", finding.resource_id, "skipped", why or "")
            continue
        backend = ctx.sources.backends.of(cluster)
        size = int(finding.details.get("size_bytes") or finding.details.get("size_gib", 0) * (1 << 30))
        by = "policy" if finding.requested_action is None else f"request {finding.requested_action}"
        async with ctx.db.transaction() as s:
            await ctx.check(s)
            qid = await q.start(s, finding, cluster.backend, size, ctx.epoch, by, ctx.settings.quarantine_s)
            await s.execute(t.findings.update().where(t.findings.c.id == finding.id).values(requested_action=None))
        row = await q.get_row(ctx.db, qid)
        try:
            await q.finish_quarantine(ctx.db, ctx.events, row, backend)
        except BerthError as exc:
            ctx.result.act("quarantine", finding.resource_id, "failed", exc.detail)
            ctx.metrics.actions.labels("quarantine", "failed").inc()
            continue
        ctx.result.act("quarantine", finding.resource_id, "done", f"until {row.purge_after.isoformat()}")
        ctx.metrics.actions.labels("quarantine", "done").inc()


async def unpublish_stale(ctx: Context) -> None:
    for finding in await _candidates(ctx, ("stale_attachment",), "unpublish"):
        if _budget(ctx) <= 0:
            break
        d = finding.details
        if not d.get("actionable"):
            ctx.result.act("unpublish", finding.resource_id, "skipped", "Kubernetes still has a VolumeAttachment")
            continue
        async with ctx.db.transaction() as s:
            await ctx.check(s)
            await store.set_finding_state(s, finding.id, "acting", requested_action=None)
        body = {"volume_id": d["volume_id"], "node_id": d["node_id"]}
        try:
            await ctx.sources.command(f"{ATTACHER}.volume.unpublish", body)
        except BerthError as exc:
            async with ctx.db.transaction() as s:
                await store.set_finding_state(s, finding.id, "open")
            ctx.result.act("unpublish", finding.resource_id, "failed", exc.detail)
            ctx.metrics.actions.labels("unpublish", "failed").inc()
            continue
        async with ctx.db.transaction() as s:
            await store.resolve(s, ctx.events, finding.id, "unpublished by the watcher")
        ctx.events.notify()
        ctx.result.act("unpublish", finding.resource_id, "done", f"{d['volume_id']} from {d['node_id']}")
        ctx.metrics.actions.labels("unpublish", "done").inc()


async def purge_due(ctx: Context, clusters: dict[str, Cluster], pv_handles: set[str]) -> None:
    for row in await q.due(ctx.db, store.now()):
        if _budget(ctx) <= 0:
            break
        cluster = clusters.get(row.cluster_id)
        if cluster is None or row.object_id in pv_handles:
            why = "its cluster is not registered" if cluster is None else "a PersistentVolume references it now"
            ctx.result.act("purge", row.object_id, "skipped", why)
            continue
        if not await q.begin_purge(ctx.db, row, ctx.epoch, ctx.leader.check):
            continue
        try:
            await _purge(ctx, await q.get_row(ctx.db, row.id), ctx.sources.backends.of(cluster))
        except BerthError as exc:
            ctx.result.act("purge", row.object_id, "failed", exc.detail)
            ctx.metrics.actions.labels("purge", "failed").inc()
            continue
        ctx.result.act("purge", row.object_id, "done")
        ctx.metrics.actions.labels("purge", "done").inc()


async def _purge(ctx: Context, row: Row[Any], backend: Any) -> None:
    """A volume the provisioner still records goes through the provisioner first (its record,
    quota and cluster figures), then its quarantined data."""
    if row.finding_kind == "volume_without_pv":
        with contextlib.suppress(NotFound):
            await ctx.sources.command(f"{PROVISIONER}.volume.delete", {"id": row.object_id}, timeout=60)
    await q.finish_purge(ctx.db, ctx.events, row, backend)

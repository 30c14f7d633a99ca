"""The reclaim job: a Released PV of Berth's driver with reclaim policy Delete, released
longer than the TTL ago (counted from `status.lastPhaseTransitionTime`), has its volume
deleted through the provisioner (never behind its back: the record, quota and cluster
figures go with it), then the PV itself (only if it is still the very PV that was read:
a uid precondition). Both steps are idempotent, so a crash between them is finished by
the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from berth_shared.errors import BerthError, NotFound
from berth_shared.messages.attacher import PREFIX as ATTACHER
from berth_shared.messages.provisioner import PREFIX as PROVISIONER
from berth_shared.messages.watcher import PvReclaimed
from berth_watcher import store
from berth_watcher.context import Context
from berth_watcher.model import Pv, Volume
from berth_watcher.sources.kube import KubeCluster


def due(pvs: list[Pv], driver: str, ttl_s: float, at: datetime) -> list[Pv]:
    """PVs to reclaim now (pure). A PV without lastPhaseTransitionTime (Kubernetes before
    1.29) is never reclaimed: its release time is unknown."""
    ttl = timedelta(seconds=ttl_s)
    return [
        pv
        for pv in pvs
        if pv.driver == driver
        and pv.phase == "Released"
        and pv.reclaim_policy == "Delete"
        and pv.phase_since is not None
        and at - pv.phase_since >= ttl
    ]


async def run(ctx: Context) -> None:
    if not ctx.sources.kube:
        ctx.result.summary["skipped"] = "no Kubernetes configured"
        return
    kube, reports = await ctx.sources.read_kube()
    ctx.note(reports)
    volumes, report = await ctx.sources.inventory.volumes()
    ctx.note(report)
    if kube is None or not kube.complete or volumes is None:
        return
    found = due(kube.pvs, ctx.settings.csi_driver, ctx.settings.reclaim_ttl_s, store.now())
    ctx.result.summary["due"] = len(found)
    if not ctx.settings.reclaim_enabled:
        ctx.result.summary["acted"] = "no: reclaim_enabled is off"
        return
    by_id = {v.id: v for v in volumes}
    clusters = {k.name: k for k in ctx.sources.kube}
    for pv in found[: max(0, ctx.settings.max_actions_per_run)]:
        await _reclaim(ctx, pv, by_id.get(pv.volume_handle), clusters[pv.kube])


async def _reclaim(ctx: Context, pv: Pv, volume: Volume | None, kube: KubeCluster) -> None:
    try:
        if volume is not None:
            grants = await ctx.sources.command(f"{ATTACHER}.attachment.list", {"volume_id": volume.id})
            holders = sorted({a["node_id"] for a in grants["items"]})
            if holders:
                ctx.result.act("reclaim", pv.name, "skipped", f"volume {volume.id} is still granted to {holders}")
                return
            async with ctx.db.transaction() as s:
                await ctx.check(s)
            with contextlib.suppress(NotFound):  # deleted meanwhile: what we wanted
                await ctx.sources.command(f"{PROVISIONER}.volume.delete", {"id": volume.id}, timeout=60)
        deleted = await asyncio.to_thread(kube.delete_pv, pv.name, pv.uid)
    except BerthError as exc:
        ctx.result.act("reclaim", pv.name, "failed", exc.detail)
        ctx.metrics.actions.labels("reclaim", "failed").inc()
        return
    except Exception as exc:  # the Kubernetes API refused or is gone: the next run retries
        ctx.result.act("reclaim", pv.name, "failed", f"{type(exc).__name__}: {exc}"[:300])
        ctx.metrics.actions.labels("reclaim", "failed").inc()
        return
    assert pv.phase_since is not None
    event = PvReclaimed(
        pv_name=pv.name,
        volume_id=pv.volume_handle,
        tenant=volume.tenant if volume else "_system",
        released_at=pv.phase_since,
        ttl_s=ctx.settings.reclaim_ttl_s,
        claim=pv.claim,
        deleted_at=store.now(),
    )
    tenant = store.event_tenant(volume.tenant if volume else None)
    async with ctx.db.transaction() as s:
        await ctx.events.emit(s, tenant, "pv", "reclaimed", pv.name, event.model_dump(mode="json"))
    ctx.events.notify()
    detail = f"volume {pv.volume_handle} deleted" + ("" if deleted else "; the PV was already gone")
    ctx.result.act("reclaim", pv.name, "done", detail)
    ctx.metrics.actions.labels("reclaim", "done").inc()

"""HTTP API of the dashboard sync (admin): the Grafana registry, sync on demand, status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status

from berth_alerts.dashboards import DashboardSync, InstanceIn
from berth_shared.bus import Lease
from berth_shared.http import PROBLEM_RESPONSES, Caller

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES, tags=["dashboards (admin)"])
FIRST_SYNC_AFTER_S = 30.0
Name = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


def _sync(request: Request) -> DashboardSync:
    sync: DashboardSync = request.app.state.dashboards
    return sync


@router.put("/grafana/instances/{name}")
async def register_instance(name: Name, body: InstanceIn, request: Request, caller: Caller) -> dict[str, Any]:
    """Register or replace a Grafana instance (its service-account token is never shown again)."""
    caller.require_admin()
    return await _sync(request).register(name, body)


@router.get("/grafana/instances")
async def list_instances(request: Request, caller: Caller) -> dict[str, Any]:
    caller.require_admin()
    items = [{k: v for k, v in asdict(i).items() if k != "token"} for i in await _sync(request).instances()]
    return {"items": items}


@router.delete("/grafana/instances/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def unregister_instance(name: Name, request: Request, caller: Caller) -> Response:
    caller.require_admin()
    await _sync(request).unregister(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/dashboards/sync")
async def sync_now(
    request: Request, caller: Caller, instance: Annotated[str | None, Query(max_length=128)] = None
) -> dict[str, Any]:
    """Sync every dashboard to every instance (or one) now; per-dashboard outcomes."""
    caller.require_admin()
    results = await _sync(request).sync_all(instance)
    return {"items": [asdict(r) for r in results]}


@router.get("/dashboards")
async def dashboards_status(request: Request, caller: Caller) -> dict[str, Any]:
    """The templates shipped, and what the last sync did with each on each instance."""
    caller.require_admin()
    sync = _sync(request)
    templates = [{"uid": uid, "title": d["title"]} for uid, d in sync.templates.items()]
    return {"templates": templates, "instances": await sync.status()}


async def run_timer(sync: DashboardSync, lease: Lease, interval_s: float) -> None:
    """Sync on a timer, on the one replica holding the lease; the first pass soon after start."""
    try:
        await asyncio.sleep(min(interval_s, FIRST_SYNC_AFTER_S))
        while True:
            try:
                if await lease.tick():
                    await sync.sync_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dashboard sync pass failed")
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(Exception):
            await lease.release()

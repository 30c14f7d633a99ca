"""HTTP API: the ingest endpoints senders are pointed at, and /v1 to look and silence.

Ingest answers 200 only after the alerts are committed; a malformed body gets a 400 that
says what is wrong, and is kept (`GET /v1/rejected`). Every route needs a bearer token;
a tenant's token sees and silences only that tenant's alerts.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy import func, select

from berth_alerts import formats
from berth_alerts import tables as t
from berth_alerts.formats import parse_json
from berth_alerts.service import AlertsService, Parser
from berth_alerts.silences import Silence, SilenceCreate, Silences
from berth_shared.errors import ResourceExhausted
from berth_shared.http import PROBLEM_RESPONSES, Caller

router = APIRouter(responses=PROBLEM_RESPONSES)


class PayloadTooLarge(ResourceExhausted):
    status = 413
    title = "Payload too large"


SilenceId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")]


def _svc(request: Request) -> AlertsService:
    svc: AlertsService = request.app.state.alerts
    return svc


def _silences(request: Request) -> Silences:
    s: Silences = request.app.state.silences
    return s


async def _ingest(request: Request, caller: Caller, source: str, parser: Parser) -> dict[str, int]:
    svc = _svc(request)
    limit = svc.settings.max_ingest_bytes
    if int(request.headers.get("content-length") or 0) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes", reason="payload_too_large")
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes", reason="payload_too_large")
    r = await svc.ingest_body(caller, source, body, request.headers.get("content-type"), parser)
    return {"accepted": r.accepted, "new": r.new, "changed": r.changed, "duplicate": r.duplicate}


@router.post("/api/v2/alerts", tags=["ingest"])
async def post_alerts(request: Request, caller: Caller) -> Response:
    """Alertmanager-compatible: point Prometheus' and Loki's ruler `alertmanagers` here."""
    timeout = _svc(request).routing.config.resolve_timeout_s
    source = "loki" if "loki" in request.headers.get("user-agent", "").lower() else "prometheus"
    await _ingest(request, caller, source, lambda body, at: formats.from_postable_body(body, source, at, timeout))
    return Response(status_code=status.HTTP_200_OK)


@router.post("/v1/ingest/alertmanager", tags=["ingest"])
async def post_alertmanager(request: Request, caller: Caller) -> dict[str, int]:
    """An Alertmanager `webhook_configs` receiver (payload version 4)."""
    return await _ingest(
        request, caller, "alertmanager", lambda body, at: formats.from_alertmanager(parse_json(body), at)
    )


@router.post("/v1/ingest/grafana", tags=["ingest"])
async def post_grafana(request: Request, caller: Caller) -> dict[str, int]:
    """A Grafana webhook contact point (unified alerting, or legacy dashboard alerts)."""
    return await _ingest(request, caller, "grafana", lambda body, at: formats.from_grafana(parse_json(body), at))


def _alert_out(r: Any) -> dict[str, Any]:
    return {
        "fingerprint": r.fingerprint,
        "status": r.status,
        "labels": r.labels,
        "annotations": r.annotations,
        "starts_at": r.starts_at,
        "ends_at": r.ends_at,
        "source": r.source,
        "updated_at": r.updated_at,
    }


@router.get("/v1/alerts", tags=["alerts"])
async def list_alerts(
    request: Request,
    caller: Caller,
    state: Annotated[str | None, Query(pattern="^(firing|resolved)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    q = select(t.alerts).order_by(t.alerts.c.updated_at.desc()).limit(limit)
    if state:
        q = q.where(t.alerts.c.status == state)
    if not caller.is_admin:
        q = q.where(t.alerts.c.tenant == caller.tenant)
    async with _svc(request).db.sessions() as s:
        return {"items": [_alert_out(r) for r in await s.execute(q)]}


@router.get("/v1/notifications", tags=["delivery"])
async def list_notifications(
    request: Request,
    caller: Caller,
    state: Annotated[str | None, Query(pattern="^(pending|sending|delivered|failed|expired|collapsed)$")] = None,
    receiver: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Delivery outcomes, newest first (admin: notifications mix tenants' alerts)."""
    caller.require_admin()
    d = t.deliveries.c
    q = (
        select(
            d.id,
            d.dedup_key,
            d.group_id,
            d.receiver,
            d.state,
            d.status,
            d.kind,
            d.alert_count,
            d.alerts_sent,
            d.attempts,
            d.next_attempt_at,
            d.last_error,
            d.collapsed_into,
            d.created_at,
            d.finished_at,
        )
        .order_by(d.id.desc())
        .limit(limit)
    )
    if state:
        q = q.where(d.state == state)
    if receiver:
        q = q.where(d.receiver == receiver)
    async with _svc(request).db.sessions() as s:
        return {"items": [dict(r._mapping) for r in await s.execute(q)]}


@router.get("/v1/receivers", tags=["delivery"])
async def list_receivers(request: Request, caller: Caller) -> dict[str, Any]:
    """Each receiver with its notifications counted by state."""
    caller.require_admin()
    svc = _svc(request)
    d = t.deliveries.c
    async with svc.db.sessions() as s:
        rows = (await s.execute(select(d.receiver, d.state, func.count()).group_by(d.receiver, d.state))).all()
    counts: dict[str, dict[str, int]] = {}
    for name, state, n in rows:
        counts.setdefault(name, {})[state] = int(n)
    return {
        "items": [
            {"name": r.name, "type": r.type, "counts": counts.get(r.name, {})} for r in svc.routing.config.receivers
        ]
    }


@router.get("/v1/rejected", tags=["ingest"])
async def list_rejected(
    request: Request, caller: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> dict[str, Any]:
    """Malformed payloads, kept for inspection (admin)."""
    caller.require_admin()
    r_ = t.rejected_payloads.c
    q = select(t.rejected_payloads).order_by(r_.id.desc()).limit(limit)
    async with _svc(request).db.sessions() as s:
        return {"items": [dict(r._mapping) for r in await s.execute(q)]}


@router.post("/v1/silences", status_code=status.HTTP_201_CREATED, tags=["silences"])
async def create_silence(body: SilenceCreate, request: Request, caller: Caller) -> Silence:
    return await _silences(request).create(caller, body)


@router.get("/v1/silences", tags=["silences"])
async def list_silences(request: Request, caller: Caller, include_expired: bool = False) -> dict[str, list[Silence]]:
    return {"items": await _silences(request).list(caller, include_expired)}


@router.get("/v1/silences/{silence_id}", tags=["silences"])
async def get_silence(silence_id: SilenceId, request: Request, caller: Caller) -> Silence:
    return await _silences(request).get(caller, silence_id)


@router.delete("/v1/silences/{silence_id}", tags=["silences"])
async def expire_silence(silence_id: SilenceId, request: Request, caller: Caller) -> Silence:
    """Expire now (kept for the record)."""
    silence = await _silences(request).expire(caller, silence_id)
    _svc(request).flush_wake.set()
    return silence

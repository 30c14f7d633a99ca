"""Ingest formats, each turned into the one internal `Alert`. Pure: parse and convert.

- Alertmanager webhook, payload version 4 (an Alertmanager relaying to Berth);
- Grafana alerting webhooks: unified alerting (Alertmanager-shaped, with orgId, title,
  state, values, ...) and the legacy dashboard-alert shape (title, ruleName, state,
  evalMatches);
- the postable alert array that Prometheus and Loki's ruler send to an Alertmanager
  (`POST /api/v2/alerts`), so Berth can stand in as their Alertmanager.

A payload that does not validate raises `PayloadError` with the field paths that are wrong.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from berth_alerts.model import Alert, Status

MAX_ALERTS = 10_000
LabelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]
Labels = Annotated[dict[LabelName, Annotated[str, Field(max_length=4096)]], Field(max_length=128)]
Annotations = Annotated[dict[str, Annotated[str, Field(max_length=65536)]], Field(max_length=128)]
GO_ZERO_YEAR = 1  # Go's zero time, "0001-01-01T00:00:00Z", means "not set"


class PayloadError(ValueError):
    def __init__(self, detail: str, errors: list[dict[str, str]]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class _In(BaseModel):
    # Senders add fields over time; unknown ones are ignored, known ones are checked.
    model_config = ConfigDict(extra="ignore")


class PostableAlert(_In):
    labels: Labels = Field(min_length=1)
    annotations: Annotations = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str | None = Field(default=None, max_length=4096)


class WebhookAlert(PostableAlert):
    status: Literal["firing", "resolved"]


class AlertmanagerWebhook(_In):
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    alerts: list[WebhookAlert] = Field(max_length=MAX_ALERTS)
    externalURL: str | None = None


class GrafanaAlert(WebhookAlert):
    values: dict[str, Any] | None = None
    dashboardURL: str | None = None
    panelURL: str | None = None
    silenceURL: str | None = None


class GrafanaUnified(_In):
    orgId: int | None = None
    title: str = ""
    state: str = ""
    status: Literal["firing", "resolved"]
    alerts: list[GrafanaAlert] = Field(max_length=MAX_ALERTS)


class EvalMatch(_In):
    metric: str = ""
    value: float | None = None
    tags: dict[str, str] | None = None


class GrafanaLegacy(_In):
    title: str = Field(min_length=1)
    ruleName: str = Field(min_length=1, max_length=1024)
    ruleId: int | None = None
    state: Literal["alerting", "ok", "no_data", "paused", "pending"]
    orgId: int | None = None
    message: str = ""
    ruleUrl: str | None = None
    evalMatches: list[EvalMatch] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)


_POSTABLE = TypeAdapter(list[PostableAlert])


def _errors(exc: ValidationError, prefix: str = "") -> PayloadError:
    errors = [
        {"field": prefix + ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    shown = ", ".join(e["field"] or "body" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return PayloadError(f"invalid payload: {shown}{more}", errors[:50])


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}", [{"field": "body", "message": str(exc)}]) from None


def _time(value: datetime | None) -> datetime | None:
    if value is None or value.year <= GO_ZERO_YEAR:
        return None
    return value.astimezone(UTC)


def _alert(a: PostableAlert, status: Status, source: str, now: datetime, extra: dict[str, str] | None = None) -> Alert:
    return Alert(
        labels={**(extra or {}), **a.labels},
        annotations=dict(a.annotations),
        status=status,
        starts_at=_time(a.startsAt) or now,
        ends_at=_time(a.endsAt) or (now if status == "resolved" else None),
        source=source,
        generator_url=a.generatorURL,
    )


def from_postable(doc: Any, source: str, now: datetime, resolve_timeout_s: float = 300.0) -> list[Alert]:
    """Prometheus/Loki `POST /api/v2/alerts`: resolved when endsAt is in the past; without
    endsAt, firing for resolve_timeout unless posted again (Alertmanager's rule)."""
    if not isinstance(doc, list):
        raise PayloadError(
            "invalid payload: expected a JSON array of alerts", [{"field": "body", "message": "not a list"}]
        )
    if len(doc) > MAX_ALERTS:
        raise PayloadError(f"too many alerts in one request (at most {MAX_ALERTS})", [])
    try:
        items = _POSTABLE.validate_python(doc)
    except ValidationError as exc:
        raise _errors(exc) from None
    return _postables(items, source, now, resolve_timeout_s)


def from_postable_body(body: bytes, source: str, now: datetime, resolve_timeout_s: float = 300.0) -> list[Alert]:
    """`from_postable(parse_json(body), ...)`, a valid body parsed and checked in one pass
    (no Python objects in between: a storm posts thousands a second); any other body
    takes that way, for its error message."""
    try:
        items = _POSTABLE.validate_json(body)
    except ValidationError:
        return from_postable(parse_json(body), source, now, resolve_timeout_s)
    if len(items) > MAX_ALERTS:
        raise PayloadError(f"too many alerts in one request (at most {MAX_ALERTS})", [])
    return _postables(items, source, now, resolve_timeout_s)


def _postables(items: list[PostableAlert], source: str, now: datetime, resolve_timeout_s: float) -> list[Alert]:
    out = []
    for a in items:
        ends = _time(a.endsAt)
        alert = _alert(a, "resolved" if ends is not None and ends <= now else "firing", source, now)
        if ends is None:
            alert.ends_at = now + timedelta(seconds=resolve_timeout_s)
        out.append(alert)
    return out


def from_alertmanager(doc: Any, now: datetime) -> list[Alert]:
    try:
        hook = AlertmanagerWebhook.model_validate(doc)
    except ValidationError as exc:
        raise _errors(exc) from None
    return [_alert(a, a.status, "alertmanager", now) for a in hook.alerts]


def from_grafana(doc: Any, now: datetime) -> list[Alert]:
    """Unified alerting (has `alerts`) or the legacy dashboard-alert webhook."""
    try:
        if isinstance(doc, dict) and "alerts" in doc:
            unified = GrafanaUnified.model_validate(doc)
            return [_grafana_unified(a, unified.orgId, now) for a in unified.alerts]
        return [_grafana_legacy(GrafanaLegacy.model_validate(doc), now)]
    except ValidationError as exc:
        raise _errors(exc) from None


def _grafana_unified(a: GrafanaAlert, org: int | None, now: datetime) -> Alert:
    alert = _alert(a, a.status, "grafana", now, {"grafana_org": str(org)} if org is not None else None)
    for key in ("dashboardURL", "panelURL", "silenceURL"):
        if getattr(a, key):
            alert.annotations.setdefault(key, str(getattr(a, key)))
    if a.values:
        alert.annotations.setdefault("values", json.dumps(a.values, sort_keys=True, default=str)[:4096])
    return alert


# Legacy Grafana has no severity; `no_data` is worth a warning, a firing rule too unless tagged.
_LEGACY_STATUS: dict[str, Status] = {"alerting": "firing", "no_data": "firing", "ok": "resolved"}


def _grafana_legacy(g: GrafanaLegacy, now: datetime) -> Alert:
    labels = {k: v for k, v in g.tags.items() if k.isidentifier()}
    labels["alertname"] = g.ruleName
    if g.orgId is not None:
        labels["grafana_org"] = str(g.orgId)
    labels.setdefault("severity", "warning")
    status = _LEGACY_STATUS.get(g.state, "resolved")  # paused/pending: not firing
    annotations = {"summary": g.title}
    if g.message:
        annotations["description"] = g.message
    if g.evalMatches:
        annotations["values"] = ", ".join(f"{m.metric}={m.value}" for m in g.evalMatches[:20])
    if g.state == "no_data":
        annotations["state"] = "no_data"
    return Alert(
        labels=labels,
        annotations=annotations,
        status=status,
        starts_at=now,
        ends_at=now if status == "resolved" else None,
        source="grafana",
        generator_url=g.ruleUrl,
    )

"""Berth's own events (JetStream, `berth.events.>`) as alerts, by type, from a table.

Every event type becomes an alert, so a new type (a watcher finding, a forecast) routes
without a code change: its severity comes from the table below, the configuration's
`event_severities` (which win), or the event's own `data.severity`, else `info`.
Most events are one-shot (told once, never repeated or resolved). A few are states:
a fence fires `NodeFenced` until the node's `unfenced`/`recovered` event resolves it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from berth_alerts.config import EventSeverity
from berth_alerts.model import SEVERITIES, Alert
from berth_shared.bus import CloudEvent

_VERSION = re.compile(r"\.v\d+$")
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class EventRule:
    alertname: str | None
    severity: str
    # Set on state events: the alert this event fires ("firing") or resolves ("resolved").
    state: str | None = None


# Severity of each event type (version dropped). The first matching pattern wins.
EVENT_RULES: tuple[tuple[str, EventRule], ...] = (
    ("io.berth.node.fenced", EventRule("NodeFenced", "critical", "firing")),
    ("io.berth.node.unfenced", EventRule("NodeFenced", "info", "resolved")),
    ("io.berth.node.recovered", EventRule("NodeFenced", "info", "resolved")),
    ("io.berth.node.fencing", EventRule("NodeFencing", "critical")),
    ("io.berth.node.awaiting_fence_approval", EventRule("NodeAwaitingFenceApproval", "critical")),
    ("io.berth.node.fence_deferred", EventRule("NodeFenceDeferred", "critical")),
    ("io.berth.node.tainted", EventRule("NodeOutOfService", "warning")),
    ("io.berth.attachment.released", EventRule("VolumeFailover", "warning")),
    ("io.berth.attachment.conflict", EventRule("AttachConflict", "warning")),
    # The watcher's findings are states: opened fires, resolved resolves (severity: the finding's).
    ("io.berth.finding.opened", EventRule("StorageFinding", "warning", "firing")),
    ("io.berth.finding.resolved", EventRule("StorageFinding", "warning", "resolved")),
    ("io.berth.capacity.forecast", EventRule("CapacityForecast", "warning")),
    ("io.berth.quarantine.created", EventRule("VolumeQuarantined", "warning")),
    ("io.berth.quarantine.purged", EventRule("QuarantinePurged", "info")),
    ("io.berth.qos.drift_repaired", EventRule("QosDriftRepaired", "info")),
    ("io.berth.watcher_run.finished", EventRule("WatcherRun", "info")),
    ("io.berth.*.create_failed", EventRule(None, "warning")),
    ("io.berth.*.*_failed", EventRule(None, "warning")),
    ("io.berth.*.failed", EventRule(None, "warning")),
    ("io.berth.*.forecast*", EventRule(None, "warning")),
    ("io.berth.cluster.updated", EventRule(None, "info")),
)
# One-shot event alerts resolve quietly after this (they are never told as resolved).
ONESHOT_TTL = timedelta(hours=1)


def base_type(event_type: str) -> str:
    return _VERSION.sub("", event_type)


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[._\-]", text) if part)


def rule_for(event: CloudEvent, overrides: list[EventSeverity]) -> EventRule:
    t = base_type(event.type)
    found: EventRule | None = None
    for pattern, rule in EVENT_RULES:
        if fnmatch.fnmatchcase(t, pattern):
            found = rule
            break
    data_severity = event.data.get("severity") if isinstance(event.data, dict) else None
    severity = found.severity if found else "info"
    if isinstance(data_severity, str) and data_severity in SEVERITIES:
        severity = data_severity  # the event says how bad it is (a finding, a forecast)
    for o in overrides:
        if fnmatch.fnmatchcase(t, o.type):
            return EventRule(
                o.alertname or (found.alertname if found else None), o.severity, found.state if found else None
            )
    return EventRule(found.alertname if found else None, severity, found.state if found else None)


def _scalar_labels(data: dict[str, Any]) -> dict[str, str]:
    """Identity-like fields of the payload, as labels routes and inhibitions can use."""
    keys = {
        "cluster_id": "cluster",
        "cluster": "cluster",
        "node": "node",
        "node_id": "node",
        "volume_id": "volume",
        "volume": "volume",
        "zone": "zone",
        "finding": "finding",
        "kind": "kind",
    }
    out: dict[str, str] = {}
    for key, label in keys.items():
        value = data.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and label not in out:
            out[label] = str(value)[:256]
    return out


def _annotations(event: CloudEvent, data: dict[str, Any]) -> dict[str, str]:
    ann = {"summary": f"{base_type(event.type).removeprefix('io.berth.')} {event.subject or ''}".strip()}
    for key in ("summary", "description", "message", "reason", "error"):
        value = data.get(key)
        if isinstance(value, str) and value:
            ann["summary" if key == "summary" else "description"] = value[:4096]
    ann["event_id"] = event.id
    ann["event_source"] = event.source
    return ann


def event_alert(event: CloudEvent, overrides: list[EventSeverity], now: datetime) -> Alert:
    rule = rule_for(event, overrides)
    t = base_type(event.type)
    data = event.data if isinstance(event.data, dict) else {}
    labels = {
        "alertname": rule.alertname or _camel(t.removeprefix("io.berth.")),
        "severity": rule.severity,
        "tenant": event.berthtenant,
        "source": "berth",
    }
    # Identity fields only (node, cluster, volume, kind...): the resolving event of a state
    # alert carries the same ones, so it has the same labels, the same fingerprint.
    labels.update(_scalar_labels(data))
    if event.subject:
        labels["subject"] = event.subject[:256]
    if rule.state is None:
        # Each one-shot event is its own alert: the event id keeps two fences of one node apart.
        labels["event_type"] = _LABEL_SAFE.sub("_", t)
        labels["event"] = event.id
    started = event.time.astimezone(UTC) if event.time else now
    if rule.state == "resolved":
        if not isinstance(data.get("severity"), str):
            labels["severity"] = _firing_severity(rule.alertname, overrides)
        return Alert(labels, _annotations(event, data), "resolved", started, started, "berth")
    oneshot = rule.state is None
    return Alert(
        labels,
        _annotations(event, data),
        "firing",
        started,
        started + ONESHOT_TTL if oneshot else None,
        "berth",
        oneshot=oneshot,
    )


def _firing_severity(alertname: str | None, overrides: list[EventSeverity]) -> str:
    """A resolving event must carry the labels of the alert it resolves (same fingerprint)."""
    for pattern, rule in EVENT_RULES:
        if rule.alertname == alertname and rule.state == "firing":
            for o in overrides:
                if fnmatch.fnmatchcase(pattern, o.type):
                    return o.severity
            return rule.severity
    return "info"

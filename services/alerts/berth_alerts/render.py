"""Notifications as messenger requests: templates, a plain fallback, size splitting. Pure.

Each receiver type has a body shape (generic webhook: Alertmanager's webhook v4 shape plus
Berth's fields; Slack-compatible incoming webhooks: `text`; Microsoft Teams Workflows: an
Adaptive Card). Text comes from Jinja2 templates (sandboxed): `title` over the
notification, `alert` once per alert. A template that fails gives the plain text instead,
marked as such: the notification is never dropped. Alerts are packed into messages below
the receiver's byte limit (and its alerts-per-message cap); a message tells which part it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from berth_alerts.config import ReceiverConfig

_ENV = SandboxedEnvironment(autoescape=False, trim_blocks=True, lstrip_blocks=True)
DEFAULT_TITLE = (
    "[{{ status | upper }}{% if status == 'firing' %}:{{ firing }}{% endif %}] "
    "{{ group_labels.values() | select | join(' ') or 'alerts' }}"
    "{% if kind == 'repeat' %} (still firing){% endif %}"
)
DEFAULT_ALERT = (
    "{{ '🔥' if alert.status == 'firing' else '✅' }} {{ alert.labels.get('severity', '') | upper }} "
    "{{ alert.labels.get('alertname', '') }}"
    "{% for k in ['cluster', 'tenant', 'node', 'volume'] if alert.labels.get(k) %}"
    " {{ k }}={{ alert.labels[k] }}{% endfor %}"
    "{% if alert.annotations.get('summary') %}: {{ alert.annotations.summary }}{% endif %}"
)
MAX_LINE = 3000  # one alert's text, at most (Slack's section limit)


def check_templates(receiver: ReceiverConfig) -> None:
    """Refuse a template that does not even compile, at start (runtime failures fall back)."""
    for source in (receiver.template.title, receiver.template.alert):
        if source:
            try:
                _ENV.from_string(source)
            except TemplateError as exc:
                raise ValueError(f"receiver {receiver.name}: template does not compile: {exc}") from exc


@dataclass
class Message:
    body: bytes
    alerts: int  # how many alerts of the notification this message carries
    template_failed: bool


def _context(notification: dict[str, Any]) -> dict[str, Any]:
    alerts = notification["alerts"]
    firing = sum(1 for a in alerts if a["status"] == "firing")
    return {
        "status": notification["status"],
        "kind": notification.get("kind", "notify"),
        "receiver": notification["receiver"],
        "group_labels": notification.get("group_labels", {}),
        "common_labels": common(a["labels"] for a in alerts),
        "firing": firing,
        "resolved": len(alerts) - firing,
        "alerts": alerts,
    }


def common(maps: Any) -> dict[str, str]:
    out: dict[str, str] | None = None
    for m in maps:
        out = dict(m) if out is None else {k: v for k, v in out.items() if m.get(k) == v}
    return out or {}


def plain_title(ctx: dict[str, Any]) -> str:
    name = " ".join(v for v in ctx["group_labels"].values() if v) or "alerts"
    return f"[{ctx['status'].upper()}] {name} ({ctx['firing']} firing, {ctx['resolved']} resolved)"


def plain_alert(a: dict[str, Any]) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()))
    summary = a["annotations"].get("summary") or a["annotations"].get("description") or ""
    return f"{a['status']}: {labels}" + (f" - {summary}" if summary else "")


class Renderer:
    def __init__(self, receiver: ReceiverConfig) -> None:
        self.receiver = receiver
        self.title = _ENV.from_string(receiver.template.title or DEFAULT_TITLE)
        self.alert = _ENV.from_string(receiver.template.alert or DEFAULT_ALERT)

    def _texts(self, ctx: dict[str, Any]) -> tuple[str, list[str], bool]:
        try:
            title = self.title.render(**ctx).strip()
            lines = [self.alert.render(alert=a, **ctx).strip() for a in ctx["alerts"]]
            return title, [ln[:MAX_LINE] for ln in lines], False
        except Exception:  # any template error: the plain text, never a dropped notification
            title = plain_title(ctx) + " (template failed; plain text)"
            return title, [plain_alert(a)[:MAX_LINE] for a in ctx["alerts"]], True

    def messages(self, notification: dict[str, Any], limit: int | None = None) -> list[Message]:
        """The notification's alerts as messages below the size limit, in order."""
        limit = limit or self.receiver.size_limit
        ctx = _context(notification)
        title, lines, failed = self._texts(ctx)
        alerts = ctx["alerts"]
        empty = len(self._body(notification, ctx, title, lines, alerts, 0, 0, part=2))
        for k, line in enumerate(lines):  # one alert alone must fit: cut its text if not
            over = len(self._body(notification, ctx, title, lines, alerts, k, k + 1, part=2)) - limit
            if over > 0:
                lines[k] = line[: max(100, len(line) - over - 64)]
        # What each alert adds to a message (its JSON and its line), to pack without re-encoding.
        cost = [
            len(self._body(notification, ctx, title, lines, alerts, k, k + 1, part=2)) - empty + 2
            for k in range(len(alerts))
        ]
        out: list[Message] = []
        start = 0
        while True:
            end, size = start, empty
            while end < len(alerts) and end - start < self.receiver.max_alerts_per_message:
                if end > start and size + cost[end] > limit:
                    break
                size += cost[end]
                end += 1
            body = self._body(notification, ctx, title, lines, alerts, start, end, part=len(out) + 1)
            while len(body) > limit and end > start + 1:  # the estimate was short: one fewer
                end -= 1
                body = self._body(notification, ctx, title, lines, alerts, start, end, part=len(out) + 1)
            out.append(Message(body, end - start, failed))
            start = end
            if start >= len(alerts):
                return out

    def _body(
        self,
        n: dict[str, Any],
        ctx: dict[str, Any],
        title: str,
        lines: list[str],
        alerts: list[dict[str, Any]],
        start: int,
        end: int,
        part: int,
    ) -> bytes:
        head = title if part == 1 else f"{title} (part {part})"
        chunk = lines[start:end]
        kind = self.receiver.type
        if kind == "slack":
            doc: dict[str, Any] = {"text": "\n".join([f"*{head}*", *chunk])}
        elif kind == "teams":
            doc = _adaptive_card(head, chunk, ctx["status"])
        else:
            doc = {
                "version": "4",
                "receiver": n["receiver"],
                "status": ctx["status"],
                "groupKey": n["group_id"],
                "notificationKey": n["dedup_key"],
                "kind": ctx["kind"],
                "part": part,
                "groupLabels": ctx["group_labels"],
                "commonLabels": ctx["common_labels"],
                "truncatedAlerts": 0,
                "title": head,
                "text": "\n".join(chunk),
                "alerts": alerts[start:end],
            }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _adaptive_card(title: str, lines: list[str], status: str) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title,
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
            "color": "Attention" if status == "firing" else "Good",
        }
    ]
    body += [{"type": "TextBlock", "text": ln, "wrap": True, "spacing": "Small"} for ln in lines]
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "msteams": {"width": "Full"},
                    "body": body,
                },
            }
        ],
    }

"""Notifications as messenger requests: templates, a plain fallback, size splitting. Pure.

Each receiver type has a body shape (generic webhook: Alertmanager's webhook v4 shape plus
Berth's fields; Slack-compatible incoming webhooks: `text`; Microsoft Teams Workflows: an
Adaptive Card). Text comes from Jinja2 templates (sandboxed): `title` over the
notification, `alert` once per alert. A template that fails gives the plain text instead,
marked as such: the notification is never dropped. Alerts are packed into messages below
the receiver's byte limit (and its alerts-per-message cap); later parts say "(continued)".
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
_LINE_LABELS = ("cluster", "tenant", "node", "volume")


def default_alert_line(alert: dict[str, Any]) -> str:
    """DEFAULT_ALERT's text, without a template render: a storm's notifications tell
    thousands of alerts a second, and the sandboxed render was most of their cost. The
    tests hold the two to the same output."""
    labels = alert["labels"]
    out = [
        "\U0001f525" if alert["status"] == "firing" else "\u2705",
        " ",
        str(labels.get("severity", "")).upper(),
        " ",
        str(labels.get("alertname", "")),
    ]
    for k in _LINE_LABELS:
        v = labels.get(k)
        if v:
            out.append(f" {k}={v}")
    summary = alert["annotations"].get("summary")
    if summary:
        out.append(f": {summary}")
    return "".join(out)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # json.dumps would make one per call


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


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
        self._fast_line = None if receiver.template.alert else default_alert_line

    def _title(self, ctx: dict[str, Any]) -> tuple[str, bool]:
        try:
            return self.title.render(**ctx).strip(), False
        except Exception:  # any template error: the plain text, never a dropped notification
            return plain_title(ctx) + " (template failed; plain text)", True

    def _line(self, ctx: dict[str, Any], alert: dict[str, Any], plain: bool) -> tuple[str, bool]:
        if not plain:
            try:
                text = self._fast_line(alert) if self._fast_line else self.alert.render(alert=alert, **ctx)
                return text.strip()[:MAX_LINE], False
            except Exception:
                pass
        return plain_alert(alert)[:MAX_LINE], True

    def next_message(
        self, notification: dict[str, Any], limit: int | None = None, *, first: bool = True, plain: bool = False
    ) -> Message:
        """The next message: as many of the notification's alerts, in order, as fit below
        the size limit (at least one, its text cut if it alone is too big). Renders only
        what goes into this message, so a large notification costs linear time."""
        limit = limit or self.receiver.size_limit
        ctx = _context(notification)
        title, failed = (plain_title(ctx) + " (template failed; plain text)", True) if plain else self._title(ctx)
        if not first:
            title += " (continued)"
        alerts = ctx["alerts"]
        lines: list[str] = []
        # The webhook body's alerts, each encoded once: measured here, then joined as they are.
        encoded: list[str] = []
        webhook = self.receiver.type == "webhook"
        size = len(self._body(notification, ctx, title, lines, encoded, 0, 0))
        for alert in alerts[: self.receiver.max_alerts_per_message]:
            line, plain = self._line(ctx, alert, failed)
            if plain and not failed:  # a template failed: this whole message in plain text
                return self.next_message(notification, limit, first=first, plain=True)
            cost = len(_dumps(line)) + 3
            enc = ""
            if webhook:
                enc = _dumps(alert)
                cost += len(enc) + 1
            elif self.receiver.type == "teams":
                cost += 70  # the TextBlock around the line
            if lines and size + cost > limit:
                break
            lines.append(line)
            if webhook:
                encoded.append(enc)
            size += cost
        end = len(lines)
        body = self._body(notification, ctx, title, lines, encoded, 0, end)
        while len(body) > limit and end > 1:  # the estimate was short: one fewer
            end -= 1
            body = self._body(notification, ctx, title, lines, encoded, 0, end)
        if len(body) > limit:  # one alert alone is too big: cut its text
            lines[0] = lines[0][: max(100, len(lines[0]) - (len(body) - limit) - 64)]
            body = self._body(notification, ctx, title, lines, encoded, 0, 1)
        return Message(body, end, failed)

    def messages(self, notification: dict[str, Any], limit: int | None = None) -> list[Message]:
        """Every message of the notification, in order (what the delivery sends one by one)."""
        out: list[Message] = []
        rest = dict(notification)
        while True:
            msg = self.next_message(rest, limit, first=not out)
            out.append(msg)
            rest["alerts"] = rest["alerts"][msg.alerts :]
            if not rest["alerts"]:
                return out

    def _body(
        self,
        n: dict[str, Any],
        ctx: dict[str, Any],
        title: str,
        lines: list[str],
        encoded: list[str],
        start: int,
        end: int,
    ) -> bytes:
        """The message body; for a webhook, `encoded` holds its alerts' JSON (see _dumps)."""
        head = title
        chunk = lines[start:end]
        kind = self.receiver.type
        if kind == "slack":
            doc: dict[str, Any] = {"text": "\n".join([f"*{head}*", *chunk])}
        elif kind == "teams":
            doc = _adaptive_card(head, chunk, ctx["status"])
        else:
            top = {
                "version": "4",
                "receiver": n["receiver"],
                "status": ctx["status"],
                "groupKey": n["group_id"],
                "notificationKey": n["dedup_key"],
                "kind": ctx["kind"],
                "groupLabels": ctx["group_labels"],
                "commonLabels": ctx["common_labels"],
                "truncatedAlerts": 0,
                "title": head,
            }
            # What json.dumps of the whole document gives, with the alerts' JSON reused.
            text = _dumps("\n".join(chunk))
            return f'{_dumps(top)[:-1]},"text":{text},"alerts":[{",".join(encoded[start:end])}]}}'.encode()
        return _dumps(doc).encode()


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

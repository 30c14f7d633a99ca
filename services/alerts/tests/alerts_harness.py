"""Running the alerts service in the test with a configuration file and fake servers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi import FastAPI

from berth_alerts.app import create_app
from berth_alerts.config import AlertsSettings
from berth_testing import MakeSettings, running

FAST = {"group_wait_s": 0.2, "group_interval_s": 0.5, "repeat_interval_s": 0}


def write_config(tmp: Path, doc: dict[str, Any]) -> Path:
    path = tmp / f"alerts-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def webhook(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": kw.pop("type", "webhook"),
        "url": url,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "rate_per_s": 1000,
        "burst": 1000,
        **kw,
    }


def simple_config(url: str, hook: dict[str, Any] | None = None, **route: Any) -> dict[str, Any]:
    """One webhook receiver `hook` at url + /hook (with `hook` options), grouped by
    alertname, fast timers."""
    return {
        "route": {"receiver": "hook", "group_by": ["alertname"], **FAST, **route},
        "receivers": [webhook("hook", url + "/hook", **(hook or {}))],
    }


def alerts_settings(make_settings: MakeSettings, config: Path, **kw: Any) -> AlertsSettings:
    values: dict[str, Any] = {"alerts_config": config, "flush_interval_s": 0.05, "delivery_poll_s": 0.05}
    values.update(kw)
    settings = make_settings(AlertsSettings, **values)
    assert isinstance(settings, AlertsSettings)
    return settings


@contextlib.asynccontextmanager
async def alerts_app(settings: AlertsSettings, token: str) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with running(app, token) as http:
        yield app, http


def am_alert(name: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": f"{name} on {labels.get('instance', 'x')}"},
        "startsAt": "2026-12-03T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-03T10:05:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": "0123456789abcdef",
    }


def am_webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": '{}:{alertname="x"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "berth",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }

"""Berth's own dashboards (services/alerts/berth_alerts/dashboards) use only metric names
that the services really expose: checked against the live /metrics of each service."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from alerts_harness import alerts_app, alerts_settings, simple_config, write_config

from berth_alerts.dashboards import load_templates
from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_testing import MakeSettings, Tenants, running
from berth_watcher.app import create_app as watcher_app
from berth_watcher.config import WatcherSettings


def metric_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        m = re.match(r"# TYPE (\S+) (\w+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "counter" and not m.group(1).endswith("_total"):
                names.add(m.group(1) + "_total")
    return names


def used_metrics(doc: object) -> set[str]:
    found = set(re.findall(r"\b(berth_[a-z_]+)", str(doc)))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in found}


async def test_dashboards_use_the_real_metric_names_of_the_services(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    exposed: set[str] = set()
    settings = alerts_settings(make_settings, write_config(tmp_path, simple_config("http://127.0.0.1:9")))
    async with contextlib.AsyncExitStack() as stack:
        for app in (
            provisioner_app(make_settings(ProvisionerSettings)),
            attacher_app(make_settings(AttacherSettings)),
            watcher_app(make_settings(WatcherSettings)),
        ):
            http = await stack.enter_async_context(running(app, tenants.admin))
            exposed |= metric_names((await http.get("/metrics")).text)
        _, http = await stack.enter_async_context(alerts_app(settings, tenants.admin))
        exposed |= metric_names((await http.get("/metrics")).text)
    templates = load_templates()
    assert len(templates) == 4
    for uid, doc in templates.items():
        used = used_metrics(doc)
        assert used, uid
        assert used <= exposed, f"{uid} uses metrics no service exposes: {sorted(used - exposed)}"
        for panel in doc["panels"]:
            assert panel["datasource"]["uid"] == "${berth.datasource}" and panel["targets"], (uid, panel["title"])

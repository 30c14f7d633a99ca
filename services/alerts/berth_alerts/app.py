"""Assembly: the FastAPI app whose lifespan runs the alert relay and the dashboard sync."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from fastapi import FastAPI

from berth_alerts import dashboards_api
from berth_alerts.api import router
from berth_alerts.config import AlertsSettings, load_config
from berth_alerts.dashboards import DashboardSync
from berth_alerts.metrics import AlertMetrics
from berth_alerts.service import AlertsService
from berth_alerts.silences import Silences
from berth_alerts.tables import bus_tables
from berth_shared.bus import Lease
from berth_shared.runtime import Runtime, build_app

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: AlertsSettings) -> FastAPI:
    config = load_config(settings)  # a bad file fails here, before anything starts
    # Stable per host and data dir: a restarted replica resends what it had in flight at once.
    owner = f"{socket.gethostname()}:{settings.data_dir.resolve()}:{settings.schema_name}"
    app: FastAPI

    def register(rt: Runtime) -> None:
        svc = AlertsService(rt.db, settings, config, AlertMetrics(rt.metrics), owner)
        app.state.alerts = svc
        app.state.silences = Silences(rt.db)
        app.state.dashboards = DashboardSync(rt.db, svc.metrics, svc.client)
        app.state.consumer = rt.event_consumer("alerts", "berth.events.>", svc.on_event)

    async def on_start(rt: Runtime) -> None:
        await app.state.alerts.start()
        await app.state.consumer.start()
        # The lease is longer than one pass can take, so one replica keeps syncing.
        lease = Lease(rt.bus, f"alerts-dashboards-{settings.schema_name}", owner, ttl_s=120.0)
        timer = dashboards_api.run_timer(app.state.dashboards, lease, settings.dashboard_sync_interval_s)
        rt.background.append(asyncio.create_task(timer))

    async def on_stop(rt: Runtime) -> None:
        await app.state.alerts.stop()

    app = build_app(
        settings,
        title="Berth alerts",
        description="Relay of alerts and bus events to messengers by severity; Grafana dashboard sync.",
        migrations=MIGRATIONS,
        tables=bus_tables,
        register=register,
        on_start=on_start,
        on_stop=on_stop,
    )
    app.include_router(router)
    app.include_router(dashboards_api.router)
    return app

"""Assembly: the FastAPI app whose lifespan runs the alerts (a healthy, empty service for now)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from berth_alerts.tables import bus_tables
from berth_shared.runtime import Runtime, build_app
from berth_shared.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings) -> FastAPI:
    def register(rt: Runtime) -> None:
        pass

    return build_app(
        settings,
        title="Berth alerts",
        description="Relay of alerts and bus events to messengers; Grafana dashboard sync.",
        migrations=MIGRATIONS,
        tables=bus_tables,
        register=register,
    )

"""Assembly: the FastAPI app whose lifespan runs the watcher (a healthy, empty service for now)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from berth_shared.runtime import Runtime, build_app
from berth_shared.settings import Settings
from berth_watcher.tables import bus_tables

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings) -> FastAPI:
    def register(rt: Runtime) -> None:
        pass

    return build_app(
        settings,
        title="Berth watcher",
        description="Periodic QoS, orphan, reclaim and usage jobs.",
        migrations=MIGRATIONS,
        tables=bus_tables,
        register=register,
    )

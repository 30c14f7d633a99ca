"""Assembly: the FastAPI app whose lifespan runs the attacher (a healthy, empty service for now)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from berth_attacher.tables import bus_tables
from berth_shared.runtime import Runtime, build_app
from berth_shared.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings) -> FastAPI:
    def register(rt: Runtime) -> None:
        pass

    return build_app(
        settings,
        title="Berth attacher",
        description="Attachments, single writer, node liveness, fencing and failover.",
        migrations=MIGRATIONS,
        tables=bus_tables,
        register=register,
    )

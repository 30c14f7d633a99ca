"""Assembly: the FastAPI app whose lifespan runs the attacher and its liveness loop."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from fastapi import FastAPI

from berth_attacher.api import router
from berth_attacher.commands import register_commands
from berth_attacher.config import AttacherSettings
from berth_attacher.context import Tainter
from berth_attacher.locator import Locator
from berth_attacher.monitor import run_monitor
from berth_attacher.service import Attacher
from berth_attacher.tables import bus_tables
from berth_shared.bus import Lease
from berth_shared.runtime import Runtime, build_app, service_token

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: AttacherSettings) -> FastAPI:
    app: FastAPI
    owner = f"{socket.gethostname()}:{settings.data_dir.resolve()}:{settings.schema_name}"

    def register(rt: Runtime) -> None:
        locator = Locator(rt.bus, service_token(settings))
        tainter: Tainter | None = None
        if settings.kube_api_url:
            from berth_attacher.kube import KubeTainter  # the client is heavy: load it only when used

            tainter = KubeTainter(
                settings.kube_api_url, token_file=settings.kube_token_file, ca_file=settings.kube_ca_file
            )
        svc = Attacher(
            rt.db,
            rt.tables,
            rt.relay,
            locator,
            settings.policy(),
            owner,
            tainter=tainter,
            operation_lease_s=settings.operation_lease_s,
            metrics=rt.metrics,
        )
        app.state.attacher = svc
        register_commands(rt.commands, svc)

    async def on_start(rt: Runtime) -> None:
        svc: Attacher = app.state.attacher
        # Fences left pending by a crash: this replica's own at once, others' once their lease
        # lapsed (the runner's sweeper on every replica); the lease is renewed while one runs.
        await svc.runner.resume_all()
        svc.runner.start()
        lease = Lease(rt.bus, f"attacher-monitor-{settings.schema_name}", owner, ttl_s=max(5.0, settings.dead_after_s))
        rt.background.append(asyncio.create_task(run_monitor(svc, lease, settings.monitor_interval_s)))

    async def on_stop(rt: Runtime) -> None:
        await app.state.attacher.stop()
        await app.state.attacher.locator.close()

    app = build_app(
        settings,
        title="Berth attacher",
        description="Attachments, single writer, node liveness, fencing and failover.",
        migrations=MIGRATIONS,
        tables=bus_tables,
        register=register,
        on_start=on_start,
        on_stop=on_stop,
    )
    app.include_router(router)
    return app

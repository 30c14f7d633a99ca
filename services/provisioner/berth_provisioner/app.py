"""Assembly: the FastAPI app whose lifespan runs the provisioner."""

from __future__ import annotations

import socket
from pathlib import Path

from fastapi import FastAPI

from berth_provisioner.api import router
from berth_provisioner.commands import register_commands
from berth_provisioner.config import ProvisionerSettings
from berth_provisioner.operations import operation_runner
from berth_provisioner.service import Provisioner
from berth_provisioner.tables import bus_tables
from berth_shared.runtime import Runtime, build_app

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: ProvisionerSettings) -> FastAPI:
    app: FastAPI

    def register(rt: Runtime) -> None:
        # Stable per host and data dir, so a restarted replica reclaims its own operations at once.
        owner = f"{socket.gethostname()}:{settings.data_dir.resolve()}:{settings.schema_name}"
        runner = operation_runner(rt.db, owner, settings.operation_lease_s, rt.metrics)
        svc = Provisioner(
            rt.db,
            rt.tables,
            rt.relay,
            runner,
            default_quota_volumes=settings.default_quota_volumes,
            default_quota_gigabytes=settings.default_quota_gigabytes,
        )
        app.state.provisioner = svc
        register_commands(rt.commands, svc)

    async def on_start(rt: Runtime) -> None:
        svc: Provisioner = app.state.provisioner
        if settings.bootstrap_file_cluster:
            await svc.clusters.bootstrap_file_cluster(str((settings.data_dir / "clusters" / "local").resolve()))
        await svc.runner.resume_all()
        svc.runner.start()

    async def on_stop(rt: Runtime) -> None:
        await app.state.provisioner.runner.stop()
        await app.state.provisioner.close()

    app = build_app(
        settings,
        title="Berth provisioner",
        description="Volumes, snapshots, storage clusters, placement and quotas.",
        migrations=MIGRATIONS,
        tables=bus_tables,
        register=register,
        on_start=on_start,
        on_stop=on_stop,
    )
    app.include_router(router)
    return app

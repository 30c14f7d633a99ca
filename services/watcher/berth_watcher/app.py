"""Assembly: the FastAPI app whose lifespan runs the watcher: its scheduler (on the leader),
the consumer that queues a QoS run when a volume is created, expanded or retyped, and the
Kubernetes PV watch that queues orphans and reclaim runs when a PV of Berth's appears,
goes or is released."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.aio import stop_tasks
from berth_shared.bus import CloudEvent, Lease
from berth_shared.db import EventWriter
from berth_shared.runtime import Runtime, build_app, service_token
from berth_watcher import store
from berth_watcher.api import router
from berth_watcher.commands import register_commands
from berth_watcher.config import WatcherSettings
from berth_watcher.context import Core, Sources
from berth_watcher.leader import Leadership
from berth_watcher.metrics import WatcherMetrics
from berth_watcher.model import Pv
from berth_watcher.service import Watcher
from berth_watcher.sources.inventory import Backends, BusInventory
from berth_watcher.sources.kube import KubeCluster
from berth_watcher.tables import bus_tables

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
QOS_VERBS = ("created", "expanded", "retyped")


def create_app(settings: WatcherSettings) -> FastAPI:
    app: FastAPI
    # Unique per process: two replicas on one host and data directory are two holders.
    owner = f"{socket.gethostname()}:{os.getpid()}:{settings.schema_name}"
    stop_watch = threading.Event()

    def register(rt: Runtime) -> None:
        kube = [
            KubeCluster.from_spec(spec, timeout_s=settings.kube_timeout_s, page_size=settings.kube_page_size)
            for spec in settings.kube_sources()
        ]
        token = service_token(settings)
        inventory = BusInventory(
            rt.bus, token, page_size=settings.inventory_page_size, timeout_s=settings.inventory_timeout_s
        )
        sources = Sources(rt.bus, token, inventory, Backends(), kube)
        lease = Lease(rt.bus, f"watcher-leader-{settings.schema_name}", owner, ttl_s=settings.lease_ttl_s)
        events = EventWriter("watcher", rt.tables, rt.relay)
        core = Core(
            settings, rt.db, events, rt.bus, Leadership(rt.db, lease), sources, WatcherMetrics(rt.metrics.registry)
        )
        app.state.watcher = Watcher(core)
        register_commands(rt.commands, app.state.watcher)

    async def on_volume_event(event: CloudEvent, session: AsyncSession) -> None:
        verb = event.type.split(".")[-2] if event.type.count(".") >= 3 else ""
        if verb in QOS_VERBS:
            await store.queue_run_in(session, "qos", "event", f"event {event.type} {event.subject}")
            app.state.watcher.scheduler.wake()

    async def on_start(rt: Runtime) -> None:
        svc: Watcher = app.state.watcher
        await rt.event_consumer("watcher-volumes", "berth.events.*.volume.*", on_volume_event).start()
        app.state.scheduler = asyncio.create_task(svc.scheduler.loop(), name="watcher-scheduler")
        rt.background.append(app.state.scheduler)
        loop = asyncio.get_running_loop()
        pending: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()

        def queue(job: str, why: str) -> None:
            async def go() -> None:
                try:
                    await store.queue_run(rt.db, job, "event", why)  # type: ignore[arg-type]
                    svc.scheduler.wake()
                finally:
                    pending.discard(job)

            if job not in pending:  # a burst of PV events queues one run
                pending.add(job)
                task = asyncio.ensure_future(go())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        def on_pv(kind: str, pv: Pv) -> None:
            loop.call_soon_threadsafe(queue, "orphans", f"PV {pv.name} {kind.lower()}")
            if pv.phase == "Released":
                loop.call_soon_threadsafe(queue, "reclaim", f"PV {pv.name} released")

        for cluster in svc.core.sources.kube:
            threading.Thread(
                target=cluster.watch_pvs,
                args=(settings.csi_driver, on_pv, stop_watch),
                name=f"kube-watch-{cluster.name}",
                daemon=True,
            ).start()

    async def on_stop(rt: Runtime) -> None:
        stop_watch.set()
        svc: Watcher = app.state.watcher
        # The jobs stop before their backends close: a job still running would reopen a
        # closed Ceph connection (never closed again) or use one being shut down.
        await stop_tasks(app.state.scheduler)
        await svc.core.sources.backends.close()
        for cluster in svc.core.sources.kube:
            cluster.close()

    app = build_app(
        settings,
        title="Berth watcher",
        description="Periodic QoS, orphan, reclaim and usage jobs: findings, quarantine, forecasts.",
        migrations=MIGRATIONS,
        tables=bus_tables,
        register=register,
        on_start=on_start,
        on_stop=on_stop,
    )
    app.include_router(router)
    return app

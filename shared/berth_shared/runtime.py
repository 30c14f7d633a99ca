"""What every service process does at start and stop, in one place.

A service gives its migrations, its bus tables and hooks; the runtime connects the DB
(and migrates it), the bus (and the events stream), the token validator, the command
server and the outbox relay, and tears them down in reverse order.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from berth_shared.aio import stop_tasks
from berth_shared.auth import (
    CloudServiceCredentials,
    KeystoneTokenValidator,
    ServiceCredentials,
    StaticTokenValidator,
    TokenValidator,
    ensure_token_file,
    first_admin_token,
)
from berth_shared.bus.client import Bus
from berth_shared.bus.commands import CommandServer
from berth_shared.bus.consumer import EventConsumer, EventHandler
from berth_shared.db.engine import Database, make_database
from berth_shared.db.migrate import upgrade
from berth_shared.db.outbox import OutboxRelay
from berth_shared.db.tables import BusTables
from berth_shared.http import install_http_basics
from berth_shared.logs import configure_logging
from berth_shared.settings import Settings
from berth_shared.telemetry import Metrics, configure_tracing

log = logging.getLogger(__name__)


def _cloud_credentials(settings: Settings) -> CloudServiceCredentials:
    assert settings.keystone_cloud
    return CloudServiceCredentials(settings.keystone_cloud, str(settings.clouds_file) if settings.clouds_file else None)


def make_validator(settings: Settings) -> TokenValidator:
    """Keystone when configured, and then only Keystone: the static token file (the
    embedded default's development tokens) is not read at all."""
    if settings.auth_backend == "keystone":
        service: str | ServiceCredentials
        if settings.keystone_cloud:
            creds = _cloud_credentials(settings)
            url, service = settings.keystone_url or creds.auth_url, creds
        elif settings.keystone_url and settings.keystone_service_token:
            url, service = settings.keystone_url, settings.keystone_service_token.get_secret_value()
        else:
            raise ValueError(
                "auth_backend=keystone needs BERTH_KEYSTONE_CLOUD (a clouds.yaml cloud), or BERTH_KEYSTONE_URL "
                "and BERTH_KEYSTONE_SERVICE_TOKEN"
            )
        return KeystoneTokenValidator(url, service, revocation_poll_s=settings.keystone_revocation_poll_s)
    ensure_token_file(settings.tokens_path)
    return StaticTokenValidator(settings.tokens_path)


def service_token(settings: Settings) -> str:
    """The token this service calls others with (admin role). With a Keystone cloud it is a
    fresh token of Berth's own user, valid for Keystone's token lifetime: a caller that
    keeps it for longer should use `service_token_provider`."""
    return service_token_provider(settings)()


def service_token_provider(settings: Settings) -> Callable[[], str]:
    if settings.service_token is not None:
        static = settings.service_token.get_secret_value()
        return lambda: static
    if settings.auth_backend == "static":
        path = settings.tokens_path
        return lambda: first_admin_token(path)
    if settings.keystone_cloud:
        return _cloud_credentials(settings).token
    raise ValueError(
        "set BERTH_KEYSTONE_CLOUD or BERTH_SERVICE_TOKEN: this service calls others with a token of the admin role"
    )


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    validator: TokenValidator
    db: Database
    tables: BusTables
    bus: Bus
    commands: CommandServer
    relay: OutboxRelay
    background: list[asyncio.Task[None]] = field(default_factory=list)
    consumers: list[EventConsumer] = field(default_factory=list)

    def event_consumer(self, name: str, filter_subject: str, handler: EventHandler) -> EventConsumer:
        """A durable consumer of the events stream, one per service schema and `name`, shared
        by every replica (each event reaches one of them); the caller starts it, the runtime
        stops it before `on_stop` (so no handler runs while the service shuts down)."""
        consumer = EventConsumer(
            self.bus,
            self.db,
            self.tables,
            stream=self.settings.events_stream,
            durable=f"{name}-{self.settings.schema_name}",
            filter_subject=filter_subject,
            handler=handler,
        )
        self.consumers.append(consumer)
        return consumer


Hook = Callable[[Runtime], Awaitable[None]]


@asynccontextmanager
async def run_runtime(
    settings: Settings,
    *,
    migrations: Path,
    tables: BusTables,
    register: Callable[[Runtime], None],
    on_start: Hook | None = None,
    on_stop: Hook | None = None,
) -> AsyncIterator[Runtime]:
    configure_tracing(settings.service)
    metrics = Metrics(settings.service)
    validator = make_validator(settings)
    db = await make_database(settings.db_url, settings.schema_name)
    await upgrade(db, migrations)
    bus = await Bus.connect(settings.nats_url, settings.service, creds=settings.nats_creds)
    await bus.ensure_events_stream(settings.events_stream, replicas=settings.events_stream_replicas)
    commands = CommandServer(bus, validator, metrics, default_timeout=settings.command_timeout_s)
    relay = OutboxRelay(db, tables, bus, metrics, poll_interval=settings.outbox_poll_interval_s)
    rt = Runtime(settings, metrics, validator, db, tables, bus, commands, relay)
    register(rt)
    relay.start()
    if on_start:
        await on_start(rt)
    await commands.start()
    log.info("service started", extra={"nats": settings.nats_url, "port": settings.port})
    try:
        yield rt
    finally:
        await commands.stop()
        for consumer in rt.consumers:
            await consumer.stop()
        if on_stop:
            await on_stop(rt)
        await stop_tasks(*rt.background)
        await relay.stop()
        await bus.close()
        await db.dispose()


def build_app(
    settings: Settings,
    *,
    title: str,
    description: str,
    migrations: Path,
    tables: BusTables,
    register: Callable[[Runtime], None],
    on_start: Hook | None = None,
    on_stop: Hook | None = None,
) -> FastAPI:
    """A FastAPI app whose lifespan runs the service runtime; `app.state.rt` holds it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with run_runtime(
            settings, migrations=migrations, tables=tables, register=register, on_start=on_start, on_stop=on_stop
        ) as rt:
            app.state.rt = rt
            yield

    app = FastAPI(title=title, description=description, version="0.1.0", lifespan=lifespan)
    metrics_proxy = _LazyMetrics(app)

    async def ready() -> dict[str, bool]:
        rt: Runtime | None = getattr(app.state, "rt", None)
        return {"bus": bool(rt and rt.bus.connected), "db": rt is not None}

    install_http_basics(app, metrics=metrics_proxy, ready=ready)  # type: ignore[arg-type]
    if settings.nats_tenant_issuer is not None:
        from berth_shared.natsauth.http import event_credentials_router  # loaded only where served

        app.include_router(event_credentials_router(settings.nats_tenant_issuer))
    return app


class _LazyMetrics:
    """The runtime's metrics exist only once the lifespan has started."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._fallback = Metrics("unstarted")

    def __getattr__(self, name: str) -> object:
        rt: Runtime | None = getattr(self._app.state, "rt", None)
        return getattr(rt.metrics if rt else self._fallback, name)


def freeze_heap() -> None:
    """Put every object alive now (the modules, their classes and functions: some 140,000
    in a service) out of the garbage collector's reach: its full collections traverse only
    what came since. Those traversals were the longest pauses a service had under load
    (65-330 ms at a time on 2 busy cores, in the middle of requests). Called once a process
    has imported everything; what is frozen is never collected, so not in test processes
    that start service after service."""
    gc.collect()
    gc.freeze()


def serve(app: FastAPI, settings: Settings) -> None:
    configure_logging(settings.service, settings.log_level, settings.log_json)
    freeze_heap()
    uvicorn.run(app, host=settings.http_host, port=settings.port, log_config=None, lifespan="on")

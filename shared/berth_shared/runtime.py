"""What every service process does at start and stop, in one place.

A service gives its migrations, its bus tables and hooks; the runtime connects the DB
(and migrates it), the bus (and the events stream), the token validator, the command
server and the outbox relay, and tears them down in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from berth_shared.auth import (
    KeystoneTokenValidator,
    StaticTokenValidator,
    TokenValidator,
    ensure_token_file,
    first_admin_token,
)
from berth_shared.bus.client import Bus
from berth_shared.bus.commands import CommandServer
from berth_shared.db.engine import Database, make_database
from berth_shared.db.migrate import upgrade
from berth_shared.db.outbox import OutboxRelay
from berth_shared.db.tables import BusTables
from berth_shared.http import install_http_basics
from berth_shared.logs import configure_logging
from berth_shared.settings import Settings
from berth_shared.telemetry import Metrics, configure_tracing

log = logging.getLogger(__name__)


def make_validator(settings: Settings) -> TokenValidator:
    if settings.auth_backend == "keystone":
        if not settings.keystone_url or not settings.keystone_service_token:
            raise ValueError("auth_backend=keystone needs BERTH_KEYSTONE_URL and BERTH_KEYSTONE_SERVICE_TOKEN")
        return KeystoneTokenValidator(settings.keystone_url, settings.keystone_service_token.get_secret_value())
    ensure_token_file(settings.tokens_path)
    return StaticTokenValidator(settings.tokens_path)


def service_token(settings: Settings) -> str:
    if settings.service_token is not None:
        return settings.service_token.get_secret_value()
    if settings.auth_backend == "static":
        return first_admin_token(settings.tokens_path)
    raise ValueError("set BERTH_SERVICE_TOKEN: this service calls others and needs a token with the admin role")


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
        if on_stop:
            await on_stop(rt)
        for task in rt.background:
            task.cancel()
        await asyncio.gather(*rt.background, return_exceptions=True)
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


def serve(app: FastAPI, settings: Settings) -> None:
    configure_logging(settings.service, settings.log_level, settings.log_json)
    uvicorn.run(app, host=settings.http_host, port=settings.port, log_config=None, lifespan="on")

"""Pytest fixtures shared by every service's tests: a real nats-server, the service DB
(PostgreSQL when BERTH_TEST_DATABASE_URL is set, else SQLite), tokens and running apps."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from berth_shared.ceph_fixture import CephCluster, CephUnavailable, ensure_packages
from berth_shared.natsserver import NatsServer
from berth_shared.settings import Settings

TEST_DB_ENV = "BERTH_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@dataclass
class Tenants:
    """A token file with an admin and two tenants unique to one test."""

    path: Path
    admin: str
    a: str
    b: str
    tenant_a: str
    tenant_b: str


@pytest.fixture
def tenants(tmp_path: Path) -> Tenants:
    uid = uuid.uuid4().hex[:8]
    ta, tb = f"ta{uid}", f"tb{uid}"
    tokens = {"admin": f"adm-{uid}", ta: f"tok-a-{uid}", tb: f"tok-b-{uid}"}
    data = {
        "tokens": [
            {"name": "admin", "token": tokens["admin"], "tenant": f"admin{uid}", "roles": ["admin"]},
            {"name": ta, "token": tokens[ta], "tenant": ta, "roles": ["member"]},
            {"name": tb, "token": tokens[tb], "tenant": tb, "roles": ["member"]},
        ]
    }
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(data))
    return Tenants(path, tokens["admin"], tokens[ta], tokens[tb], ta, tb)


@pytest.fixture
def db_url(tmp_path: Path) -> str | None:
    """None means the embedded default (SQLite under the data dir)."""
    return os.environ.get(TEST_DB_ENV) or None


@pytest.fixture
def make_settings(
    tmp_path: Path, nats_server: NatsServer, tenants: Tenants, db_url: str | None
) -> Iterator[Callable[..., Settings]]:
    schemas: list[str] = []

    def make(service: str, settings_cls: type[Settings] = Settings, **overrides: Any) -> Settings:
        schema = f"{service}_{uuid.uuid4().hex[:10]}"
        schemas.append(schema)
        values: dict[str, Any] = {
            "service": service,
            "data_dir": tmp_path / "berth",
            "nats_url": nats_server.url,
            "database_url": db_url,
            "db_schema": schema,
            "token_file": tenants.path,
            "log_json": False,
            "outbox_poll_interval_s": 0.2,
        }
        values.update(overrides)
        return settings_cls(**values)

    yield make
    if db_url and schemas:
        drop_schemas(db_url, schemas)


def drop_schemas(db_url: str, schemas: list[str]) -> None:
    """Drop the PostgreSQL schemas a test made (runs its own event loop: call from teardown)."""
    import asyncio

    async def drop() -> None:
        engine = create_async_engine(db_url.replace("postgresql://", "postgresql+asyncpg://", 1))
        async with engine.begin() as conn:
            for schema in schemas:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()

    asyncio.run(drop())


@asynccontextmanager
async def running(app: FastAPI, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an HTTP client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://berth.test", headers=headers) as client:
            yield client


# -- a real Ceph (issue 4) -------------------------------------------------------------------

CEPH_REQUIRED_ENV = "BERTH_REQUIRE_CEPH"


@pytest.fixture(scope="session")
def ceph() -> Iterator[CephCluster]:
    """One real Ceph cluster (mon, mgr, OSD, MDS on loopback) for the whole session, with
    an RBD pool `rbd` (plus `rbd-data`) and a file system `cephfs`. Installs the Debian
    packages when missing. Skips with the reason when Ceph cannot run here, unless
    BERTH_REQUIRE_CEPH=1 (CI on machines that can run it), where that is a failure."""
    try:
        ensure_packages()
        cluster = CephCluster()
        cluster.start()
    except (CephUnavailable, OSError) as exc:
        if os.environ.get(CEPH_REQUIRED_ENV) == "1":
            pytest.fail(f"{CEPH_REQUIRED_ENV}=1 but a real Ceph cannot run here: {exc}", pytrace=False)
        pytest.skip(f"no real Ceph on this machine: {exc}")
    yield cluster
    cluster.stop()

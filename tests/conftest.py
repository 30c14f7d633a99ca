"""Fixtures of the cross-service tests (the shared ones come from the berth_testing plugin)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from berth_procs import ServiceProcess

from berth_shared.natsserver import NatsServer
from berth_testing import Tenants, drop_schemas


@pytest.fixture
def service_process(
    tmp_path: Path, nats_server: NatsServer, tenants: Tenants, db_url: str | None
) -> Iterator[Callable[..., ServiceProcess]]:
    """Make real service processes on the session nats-server, this test's tokens and DB
    (a unique schema on PostgreSQL); every one is stopped and its schema dropped after."""
    made: list[ServiceProcess] = []

    def make(service: str = "provisioner", **kw: object) -> ServiceProcess:
        values: dict[str, object] = {
            "service": service,
            "data_dir": tmp_path / f"{service}-{len(made)}",
            "nats_url": nats_server.url,
            "token_file": tenants.path,
            "database_url": db_url,
            "db_schema": f"{service}_{uuid.uuid4().hex[:10]}" if db_url else None,
        }
        values.update(kw)
        proc = ServiceProcess(**values)  # type: ignore[arg-type]
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()
    schemas = [p.db_schema for p in made if p.database_url and p.db_schema]
    if db_url and schemas:
        drop_schemas(db_url, schemas)

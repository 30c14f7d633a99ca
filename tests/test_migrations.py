"""Each service's migrations build exactly the schema its tables declare (the bus tables
through the shared `create_bus_tables`, the rest in the service's own revisions), go down
to nothing and up again, on SQLite and on PostgreSQL."""

from __future__ import annotations

import importlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, inspect, text

from berth_shared.db import Database, alembic_config, make_database, upgrade

SERVICES = ("provisioner", "attacher", "watcher", "alerts")


def _service(name: str) -> tuple[Path, MetaData]:
    app = importlib.import_module(f"berth_{name}.app")
    tables = importlib.import_module(f"berth_{name}.tables")
    return Path(app.MIGRATIONS), tables.metadata


def _differences(conn: Connection, metadata: MetaData) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return [d for d in compare_metadata(ctx, metadata) if not _version_table(d)]


def _version_table(diff: Any) -> bool:
    return isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == "alembic_version"


async def _downgrade(db: Database, migrations: Path) -> None:
    cfg = alembic_config(migrations, db.schema)

    def run(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_build_the_declared_schema(service: str, db_url: str | None, tmp_path: Path) -> None:
    migrations, metadata = _service(service)
    schema = f"mig_{service}_{uuid.uuid4().hex[:8]}"
    db = await make_database(db_url or f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", schema)
    try:
        await upgrade(db, migrations)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_differences, metadata) == []
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert {"outbox", "parked_messages", "processed_events"} <= tables
        # Down to nothing and up again: the shared bus-table DDL is reversible as well.
        await _downgrade(db, migrations)
        async with db.engine.connect() as conn:
            assert set(await conn.run_sync(lambda c: inspect(c).get_table_names())) <= {"alembic_version"}
        await upgrade(db, migrations)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_differences, metadata) == []
    finally:
        if db_url:
            async with db.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await db.engine.dispose()

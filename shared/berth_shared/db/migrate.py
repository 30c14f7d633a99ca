"""Alembic per service, run in-process at start-up, version table in the service's own schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from berth_shared.db.engine import Database


def alembic_config(script_location: Path, schema: str | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["schema"] = schema
    return cfg


async def upgrade(db: Database, script_location: Path, revision: str = "head") -> None:
    cfg = alembic_config(script_location, db.schema)

    def _run(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_run)


def run_env(context: Any, target_metadata: Any) -> None:
    """Body of every service's migrations/env.py: migrate the connection handed in."""
    conn = context.config.attributes.get("connection")
    if conn is None:
        raise RuntimeError("migrations run in-process through berth_shared.db.migrate.upgrade")
    schema = context.config.attributes.get("schema")
    context.configure(
        connection=conn,
        target_metadata=target_metadata,
        version_table_schema=schema,
        render_as_batch=conn.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()

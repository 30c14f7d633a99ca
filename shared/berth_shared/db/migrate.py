"""Alembic per service, run in-process at start-up, version table in the service's own schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command, op
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


# -- the bus tables in a service's first migration -------------------------------------------
# Every service's first migration creates the bus tables (outbox, parked messages, processed
# events) through these two, so the DDL is written once. It is the tables as they were at
# that first revision and stays so: a later change to the bus tables is a new migration in
# each service, never an edit here (databases already at that revision would not get it).


def create_bus_tables() -> None:
    """In a migration's `upgrade`: the bus tables of `berth_shared.db.tables`, first revision."""
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "outbox",
        sa.Column("seq", big_id, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_published_at"), ["published_at"], unique=False)
    op.create_table(
        "parked_messages",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
    )


def drop_bus_tables() -> None:
    """In a migration's `downgrade`: what `create_bus_tables` made."""
    op.drop_table("processed_events")
    op.drop_table("parked_messages")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_published_at"))
    op.drop_table("outbox")

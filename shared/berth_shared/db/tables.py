"""Tables every service with bus traffic carries in its own schema."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

from berth_shared.clock import now


@dataclass(frozen=True)
class BusTables:
    outbox: Table
    processed_events: Table
    parked_messages: Table


def add_bus_tables(metadata: MetaData) -> BusTables:
    outbox = Table(
        "outbox",
        metadata,
        # Autoincrement keeps relay order equal to commit order within one writer.
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("subject", String(255), nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False, default=now),
        Column("published_at", UTCDateTime(), nullable=True, index=True),
    )
    processed = Table(
        "processed_events",
        metadata,
        Column("consumer", String(128), primary_key=True),
        Column("event_id", String(64), primary_key=True),
        Column("processed_at", UTCDateTime(), nullable=False, default=now),
    )
    parked = Table(
        "parked_messages",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("consumer", String(128), nullable=False),
        Column("subject", String(255), nullable=False),
        Column("headers", JSON, nullable=False),
        Column("payload", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("deliveries", Integer, nullable=False),
        Column("parked_at", UTCDateTime(), nullable=False, default=now),
    )
    return BusTables(outbox, processed, parked)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every dialect (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def timestamp(name: str) -> Column[datetime]:
    """A NOT NULL UTC timestamp column set on insert (created_at, updated_at)."""
    return Column(name, UTCDateTime(), nullable=False, default=now)

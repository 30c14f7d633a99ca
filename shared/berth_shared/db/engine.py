"""One engine per service: its own SQLite file, or its own schema on a shared PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Result, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # used with fullmatch: `$` would allow a trailing newline


def affected(result: Result[Any]) -> int:
    """Rows changed by an UPDATE/DELETE (the conditional-update idiom relies on it)."""
    return int(cast(CursorResult[Any], result).rowcount)


async def insert_ignore(session: AsyncSession, table: Table, values: dict[str, Any]) -> None:
    """INSERT that does nothing when the row exists (both dialects)."""
    ins: Any = (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)
    await session.execute(ins.values(**values).on_conflict_do_nothing())


@dataclass
class Database:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    schema: str | None
    _reads: async_sessionmaker[AsyncSession] = field(init=False, repr=False)
    _autocommit: AsyncEngine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # PostgreSQL: reads on an autocommit connection, one round trip per statement
        # instead of three (a session's implicit BEGIN and its ROLLBACK at close). SQLite
        # keeps its sessions: its one connection's BEGIN IMMEDIATE setup (below) must
        # not be reset by an isolation-level change, and a local round trip costs nothing.
        if self.is_sqlite:
            self._reads = self.sessions
            self._autocommit = self.engine
        else:
            self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            self._reads = async_sessionmaker(self._autocommit, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def statements(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection (no ORM session) whose statements each stand alone: on
        PostgreSQL autocommit, one round trip per statement; on SQLite one transaction,
        committed at the end. For a hot path that needs no transaction across statements
        (the outbox relay's read, then its marking)."""
        if self.is_sqlite:
            async with self.engine.begin() as conn:
                yield conn
        else:
            async with self._autocommit.connect() as conn:
                yield conn

    def reads(self) -> AsyncSession:
        """A session for reads only, each statement on its own (no transaction around them):
        for a lookup that needs no snapshot across statements. Use as `async with`."""
        return self._reads()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


def _normalise(url: str) -> str:
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+asyncpg")
    elif u.drivername == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    return u.render_as_string(hide_password=False)


async def make_database(url: str, schema: str) -> Database:
    """Create the engine; on PostgreSQL create the service's schema and pin search_path to it."""
    url = _normalise(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        db_path = make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
        # Every SQLite transaction takes the write lock (below), so concurrency buys nothing;
        # one pooled connection makes callers queue in FIFO order on the pool instead of
        # sleeping in SQLite's busy handler (which cost seconds of p99 under load).
        kwargs["pool_size"] = 1
        kwargs["max_overflow"] = 0
        kwargs["pool_timeout"] = 60
        engine = create_async_engine(url, **kwargs)
        _sqlite_serialised_writes(engine)
        used_schema = None
    else:
        if not _SCHEMA.fullmatch(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 20
        engine = create_async_engine(url, **kwargs)
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        used_schema = schema
    return Database(engine, async_sessionmaker(engine, expire_on_commit=False), used_schema)


def _sqlite_serialised_writes(engine: AsyncEngine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE.

    A deferred SQLite transaction that reads then writes can fail with "database is
    locked" when another writer got in between; taking the write lock at BEGIN makes
    concurrent transactions wait their turn instead (busy timeout above).
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

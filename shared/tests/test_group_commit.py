"""GroupCommit against a real database (SQLite, or PostgreSQL with BERTH_TEST_DATABASE_URL):
concurrent items share transactions, and a shared transaction that fails is retried item by
item, so exactly the items that fit alone commit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.db import Database, GroupCommit, affected, make_database

metadata = MetaData()
items = Table("items", metadata, Column("name", String(64), primary_key=True))
budget = Table("budget", metadata, Column("id", Integer, primary_key=True), Column("left", Integer, nullable=False))


class OverBudget(Exception):
    pass


@pytest.fixture
async def db(db_url: str | None, tmp_path: Path) -> AsyncIterator[Database]:
    schema = f"gc_{uuid.uuid4().hex[:10]}"
    database = await make_database(db_url or f"sqlite:///{tmp_path / 'gc.db'}", schema)
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(budget.insert().values(id=1, left=5))
    try:
        yield database
    finally:
        if database.schema:
            async with database.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{database.schema}" CASCADE'))
        await database.dispose()


class Recorder:
    """Inserts names and spends one unit of the budget per name, all or nothing."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def apply(self, s: AsyncSession, names: list[str]) -> list[str]:
        self.batches.append(list(names))
        await s.execute(items.insert(), [{"name": n} for n in names])
        spend = update(budget).where(budget.c.id == 1, budget.c.left >= len(names))
        if affected(await s.execute(spend.values(left=budget.c.left - len(names)))) != 1:
            raise OverBudget(f"no budget for {len(names)}")
        return [f"ok {n}" for n in names]


async def committed(db: Database) -> set[str]:
    async with db.sessions() as s:
        return set((await s.execute(select(items.c.name))).scalars())


async def left(db: Database) -> int:
    async with db.sessions() as s:
        return int((await s.execute(select(func.sum(budget.c.left)))).scalar_one())


async def test_items_arriving_together_share_a_transaction(db: Database) -> None:
    rec = Recorder()
    gc: GroupCommit[str, str] = GroupCommit(db, rec.apply)
    results = await asyncio.gather(*(gc.submit(f"n{i}") for i in range(5)))
    assert results == [f"ok n{i}" for i in range(5)]
    assert len(rec.batches) < 5, rec.batches  # submitted in one loop step: one or two transactions
    assert await committed(db) == {f"n{i}" for i in range(5)}
    assert await left(db) == 0


async def test_a_failing_item_fails_alone(db: Database) -> None:
    rec = Recorder()
    gc: GroupCommit[str, str] = GroupCommit(db, rec.apply)
    await gc.submit("taken")
    outcomes = await asyncio.gather(*(gc.submit(n) for n in ("a", "taken", "b")), return_exceptions=True)
    assert outcomes[0] == "ok a" and outcomes[2] == "ok b"
    assert isinstance(outcomes[1], Exception) and not isinstance(outcomes[1], OverBudget)  # the duplicate key
    assert await committed(db) == {"taken", "a", "b"}
    assert await left(db) == 2


async def test_a_batch_over_the_limit_commits_exactly_what_fits(db: Database) -> None:
    rec = Recorder()
    gc: GroupCommit[str, str] = GroupCommit(db, rec.apply)
    outcomes = await asyncio.gather(*(gc.submit(f"n{i}") for i in range(8)), return_exceptions=True)
    ok = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, OverBudget)]
    assert (len(ok), len(refused)) == (5, 3)
    assert len(await committed(db)) == 5
    assert await left(db) == 0
    assert any(len(b) > 1 for b in rec.batches)  # it was tried together first


async def test_callers_are_answered_when_the_committer_is_cancelled(db: Database) -> None:
    started, never = asyncio.Event(), asyncio.Event()

    async def stuck(s: AsyncSession, names: list[str]) -> list[str]:
        started.set()
        await never.wait()
        return names

    gc: GroupCommit[str, str] = GroupCommit(db, stuck)
    first = asyncio.create_task(gc.submit("a"))
    await started.wait()
    second = asyncio.create_task(gc.submit("b"))  # queued behind the stuck transaction
    await asyncio.sleep(0)
    assert gc._drainer is not None
    gc._drainer.cancel()
    async with asyncio.timeout(5.0):
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(o, ConnectionAbortedError) for o in outcomes), outcomes

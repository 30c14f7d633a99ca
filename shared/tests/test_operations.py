"""The operation runner: its pure policy as tables, then the runner itself, two replicas of
it on one real database (SQLite here; the attacher's process test does it on PostgreSQL):
a step slower than the lease stays with its owner, a crashed owner's operation is taken
over once its lease lapses, a replica whose lease was taken stops its step, and failures
retry or give up as the policy says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, Text, select, update

from berth_shared.backends import BackendError
from berth_shared.db import Database, make_database
from berth_shared.db.tables import UTCDateTime
from berth_shared.errors import FailedPrecondition, NotFound
from berth_shared.operations import (
    GiveUp,
    LeaseTerms,
    OperationRunner,
    Retry,
    RetryPolicy,
    after_failure,
    may_claim,
)
from berth_shared.telemetry import Metrics
from berth_testing import eventually

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("owner", "lease_until", "at", "allowed"),
    [
        ("me", T0 + S, T0, True),  # its own: a restarted replica reclaims at once
        ("other", T0 + S, T0, False),  # another's lease still runs
        ("other", T0 + S, T0 + S, False),  # the lease's last instant still holds
        ("other", T0 + S, T0 + 2 * S, True),  # lapsed: the owner crashed
        ("other", None, T0, True),  # never leased
        (None, None, T0, True),
    ],
)
def test_may_claim(owner: str | None, lease_until: datetime | None, at: datetime, allowed: bool) -> None:
    assert may_claim(owner, lease_until, "me", at) is allowed


@pytest.mark.parametrize(
    ("lease_s", "renew_s", "sweep_s"),
    [(30.0, 10.0, 5.0), (20.0, 20 / 3, 5.0), (2.0, 2 / 3, 0.5), (0.2, 0.2 / 3, 0.1)],
)
def test_lease_terms(lease_s: float, renew_s: float, sweep_s: float) -> None:
    terms = LeaseTerms(timedelta(seconds=lease_s))
    assert terms.renew_every_s == pytest.approx(renew_s)
    assert terms.sweep_every_s == pytest.approx(sweep_s)
    assert terms.until(T0) == T0 + timedelta(seconds=lease_s)


FIVE = RetryPolicy(max_attempts=5, transient=(BackendError, OSError))
FOREVER = RetryPolicy(max_attempts=None, transient=(Exception,), max_delay_s=10.0)


@pytest.mark.parametrize(
    ("policy", "attempts", "exc", "expected"),
    [
        (FIVE, 1, BackendError("busy"), Retry(0.2)),
        (FIVE, 2, OSError("EIO"), Retry(0.4)),
        (FIVE, 4, BackendError("busy"), Retry(1.6)),
        (FIVE, 5, BackendError("busy"), GiveUp("busy")),  # out of attempts
        (FIVE, 1, FailedPrecondition("has watchers"), GiveUp("has watchers")),  # not transient
        (FIVE, 1, KeyError("x"), GiveUp("KeyError: 'x'")),
        (FOREVER, 1, KeyError("x"), Retry(0.2)),
        (FOREVER, 1000, RuntimeError("down"), Retry(10.0)),  # never gives up, capped delay
    ],
)
def test_after_failure(policy: RetryPolicy, attempts: int, exc: BaseException, expected: Retry | GiveUp) -> None:
    assert after_failure(policy, attempts, exc) == expected


# -- the runner on a real database ------------------------------------------------------

metadata = MetaData()
ops = Table(
    "ops",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("params", JSON, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Column("owner", String(128), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
)
LEASE = timedelta(seconds=0.6)
FAST = RetryPolicy(max_attempts=5, transient=(BackendError, OSError), first_delay_s=0.01)  # FIVE, sooner


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await make_database(f"sqlite:///{tmp_path / 'ops.db'}", "ops")
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield database
    await database.dispose()


class Steps:
    """One kind's steps, recording who ran what; `gate` holds `do` until set."""

    def __init__(self, name: str, fail_with: list[Exception] | None = None) -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.done: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.cancelled: list[str] = []
        self.fail_with = fail_with or []

    async def do(self, op: dict[str, Any]) -> None:
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(op["id"])
            raise
        if self.fail_with:
            raise self.fail_with.pop(0)

    async def finish(self, op: dict[str, Any]) -> None:
        self.done.append(op["id"])

    async def fail(self, op: dict[str, Any], why: str) -> None:
        self.failed.append((op["id"], why))


def replica(db: Database, steps: Steps, retry: RetryPolicy = FAST, metrics: Metrics | None = None) -> OperationRunner:
    runner = OperationRunner(db, ops, steps.name, LEASE, retry, kind_of=lambda _op: "k", metrics=metrics)
    runner.register("k", steps.do, steps.finish, steps.fail)
    return runner


async def insert(db: Database, runner: OperationRunner, op_id: str) -> None:
    async with db.transaction() as s:
        await s.execute(ops.insert().values(**runner.values(op_id, params={})))


async def row(db: Database, op_id: str) -> Any:
    async with db.sessions() as s:
        return (await s.execute(select(ops).where(ops.c.id == op_id))).one()


async def test_a_step_slower_than_the_lease_stays_with_its_owner(db: Database) -> None:
    a_steps, b_steps = Steps("a"), Steps("b")
    a, b = replica(db, a_steps), replica(db, b_steps)
    a_steps.gate.clear()
    await insert(db, a, "op-1")
    a.start()
    b.start()
    try:
        a.launch("op-1")
        await a_steps.started.wait()
        # Five leases long, with B sweeping every 0.15 s: only A's renewals keep it A's.
        deadline = asyncio.get_running_loop().time() + 5 * LEASE.total_seconds()
        while asyncio.get_running_loop().time() < deadline:
            r = await row(db, "op-1")
            assert (r.owner, r.attempts) == ("a", 1)
            await asyncio.sleep(0.05)
        a_steps.gate.set()
        await eventually(lambda: row(db, "op-1"), lambda r: r.state == "done", what="op-1 done")
        assert (a_steps.done, b_steps.done, b_steps.started.is_set()) == (["op-1"], [], False)
    finally:
        await a.stop()
        await b.stop()


async def test_a_crashed_owners_operation_is_taken_over_once_its_lease_lapses(db: Database) -> None:
    a_steps, b_steps = Steps("a"), Steps("b")
    a, b = replica(db, a_steps), replica(db, b_steps)
    a_steps.gate.clear()
    await insert(db, a, "op-1")
    a.launch("op-1")
    await a_steps.started.wait()
    # A dies mid-step: its task and renewals stop, its row stays as it was.
    await a.stop()
    b.start()
    try:
        await eventually(lambda: row(db, "op-1"), lambda r: r.state == "done", what="op-1 done by b")
        r = await row(db, "op-1")
        assert (r.owner, r.attempts, r.lease_until) == ("b", 2, None)
        assert (a_steps.done, b_steps.done) == ([], ["op-1"])
    finally:
        await b.stop()


async def test_a_replica_whose_lease_was_taken_stops_its_step(db: Database) -> None:
    a_steps = Steps("a")
    a = replica(db, a_steps)
    a_steps.gate.clear()
    await insert(db, a, "op-1")
    a.start()
    try:
        task = a.launch("op-1")
        await a_steps.started.wait()
        # As if A had been cut off from the DB for a whole lease and B had taken over.
        async with db.transaction() as s:
            await s.execute(update(ops).where(ops.c.id == "op-1").values(owner="b"))
        await eventually(lambda: task.done(), what="a's step stopped")
        assert a_steps.cancelled == ["op-1"]
        assert (await row(db, "op-1")).state == "pending"  # b's to finish
    finally:
        await a.stop()


async def test_transient_failures_retry_then_succeed(db: Database) -> None:
    steps = Steps("a", fail_with=[BackendError("busy"), OSError("EIO")])
    metrics = Metrics("test")
    a = replica(db, steps, metrics=metrics)
    await insert(db, a, "op-1")
    await a.launch("op-1")
    r = await row(db, "op-1")
    assert (r.state, r.attempts, steps.done, steps.failed) == ("done", 3, ["op-1"], [])

    def sample(name: str, **labels: str) -> float | None:
        value = metrics.registry.get_sample_value(name, {"service": "test", "kind": "k", **labels})
        return None if value is None else float(value)

    assert sample("berth_operation_claims_total") == 3
    assert sample("berth_operations_total", outcome="retried") == 2
    assert sample("berth_operations_total", outcome="done") == 1


async def test_gives_up_when_the_policy_says_so(db: Database) -> None:
    steps = Steps("a", fail_with=[BackendError("busy")] * 2 + [NotFound("cluster gone")])
    a = replica(db, steps)
    await insert(db, a, "op-1")
    await a.launch("op-1")
    r = await row(db, "op-1")
    assert (r.state, r.error, r.attempts, r.lease_until) == ("failed", "cluster gone", 3, None)
    assert steps.failed == [("op-1", "cluster gone")]
    failure = await a.failure("op-1")
    assert isinstance(failure, NotFound)  # the error itself, to the caller in this process

    # Out of attempts: the last transient error is the reason.
    steps = Steps("a", fail_with=[BackendError("busy")] * 5)
    a = replica(db, steps)
    await insert(db, a, "op-2")
    await a.launch("op-2")
    assert ((await row(db, "op-2")).state, steps.failed) == ("failed", [("op-2", "busy")])


async def test_a_finished_operation_is_not_run_again(db: Database) -> None:
    steps = Steps("a")
    a = replica(db, steps)
    await insert(db, a, "op-1")
    await a.launch("op-1")
    assert await a.resume_all() == 0
    await a.launch("op-1")  # a late duplicate launch finds nothing to claim
    assert steps.done == ["op-1"]

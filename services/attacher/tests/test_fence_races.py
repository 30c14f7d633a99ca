"""Races between a fence starting and a node's own requests, made deterministic on PostgreSQL.

On PostgreSQL (READ COMMITTED) a transaction that read a node's state without locking the
row could act on a state a concurrent fence had already changed:

* a publish to a node that read it `alive` and then waited for the volume's lock could
  grant the volume after the fence had started, outside the fence's targets; the fence's
  completion then released that grant without having cut the node off from the volume;
* a heartbeat that read `dead`/`awaiting_approval` could set the node back to `alive`
  after the fence had started, so the node was told it was not fenced while it was.

Each test holds a lock from outside (the volume's advisory lock, or the node's row) to stop
one transaction at the racy point, lets the other one queue or go, then releases it. On
SQLite writers are serialised (BEGIN IMMEDIATE), so these interleavings cannot happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from attacher_checks import fences, node_state, publish, register_node, uid
from attacher_harness import Stack, stack
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from berth_shared.settings import Settings
from berth_testing import MakeSettings, Tenants, eventually

S = TypeVar("S", bound=Settings)
QUIET = {"dead_after_s": 600.0}  # no node dies on its own here: only the admin's down call


@pytest.fixture
def pg_url(db_url: str | None) -> str:
    if not db_url or not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite serialises writers, so these interleavings cannot happen")
    return db_url


@asynccontextmanager
async def outside(url: str) -> AsyncIterator[AsyncConnection]:
    """A connection of our own, in a transaction, to hold locks the attacher will wait for."""
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.connect() as conn:
            await conn.begin()
            yield conn
    finally:
        await engine.dispose()


async def waiting_on_locks(conn: AsyncConnection) -> int:
    """Sessions blocked, directly or through one another, by our own connection's locks
    (other tests may share the database: their waits do not count)."""
    # pg_stat_activity lists the backends as of the transaction's first read of it: a
    # session that connected since (a fresh pool connection) would stay invisible.
    await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
    rows = await conn.execute(
        text(
            "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )
    blockers = {int(pid): {int(b) for b in blocking} for pid, blocking in rows.all()}
    mine = {int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())}
    while True:
        more = {pid for pid, blocking in blockers.items() if blocking & mine} - mine
        if not more:
            return len(mine) - 1
        mine |= more


def recording(make_settings: MakeSettings, made: dict[str, Settings]) -> MakeSettings:
    """make_settings that remembers each service's settings (to know the attacher's schema)."""

    def make(settings_cls: type[S], /, **kw: Any) -> S:
        settings = make_settings(settings_cls, **kw)
        made[settings.service] = settings
        return settings

    return make


async def test_publish_racing_a_fence_start_is_refused_or_fenced(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, pg_url: str
) -> None:
    made: dict[str, Settings] = {}
    async with (
        asyncio.timeout(60),
        stack(recording(make_settings, made), tenants, tmp_path, **QUIET) as st,
        outside(pg_url) as conn,
    ):
        held, racing = await st.volume("held"), await st.volume("racing")
        node = uid("node")
        await register_node(st, node)
        assert (await publish(st, tenants.a, held["id"], node)).status_code == 201

        # The publish of `racing` to the node stops at the volume's lock, after it has
        # checked that the node is alive.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:v))"), {"v": racing["id"]})
        pub = asyncio.create_task(publish(st, tenants.a, racing["id"], node))
        await eventually(lambda: _waiters_at_least(conn, 1), what="the publish to wait for the volume lock")

        # Meanwhile the node is declared down: the fence starts (or queues behind the publish).
        down = asyncio.create_task(
            st.att.post(f"/v1/nodes/{node}/down", json={"reason": "race"}, headers=st.h(tenants.admin))
        )
        await eventually(lambda: _done_or_waiting(down, conn, 2), what="the down call to finish or queue")
        await conn.rollback()  # let the publish go on
        r_pub, r_down = await asyncio.wait_for(asyncio.gather(pub, down), 15.0)
        assert r_down.status_code == 200, r_down.text

        await eventually(lambda: _state_in(st, node, "fenced"), what="the fence to complete")
        assert [f["state"] for f in await fences(st, node)] == ["done"]
        schema = made["attacher"].schema_name
        rows = await conn.execute(text(f'SELECT targets FROM "{schema}".fences WHERE node_id = :id'), {"id": node})
        targets = [v for (raw,) in rows.all() for entry in raw.values() for v in entry["volumes"]]
        await conn.rollback()
        if r_pub.status_code == 201:
            # Granted before the fence started: then the fence must have cut it off too.
            assert racing["id"] in targets, f"grant of {racing['id']} escaped the fence (targets {targets})"
        else:
            assert r_pub.status_code == 409, r_pub.text
            assert r_pub.json()["reason"] == "node_not_alive", r_pub.text
        # Whatever the order, another node can now take the volume only because it was cut.
        other = uid("other")
        await register_node(st, other)
        assert (await publish(st, tenants.a, racing["id"], other)).status_code == 201


async def test_heartbeat_racing_a_fence_start_does_not_revive_the_node(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, pg_url: str
) -> None:
    made: dict[str, Settings] = {}
    async with (
        asyncio.timeout(60),
        stack(recording(make_settings, made), tenants, tmp_path, fence_mode="manual", **QUIET) as st,
        outside(pg_url) as conn,
    ):
        node = uid("node")
        await register_node(st, node)
        r = await st.att.post(f"/v1/nodes/{node}/down", json={"reason": "race"}, headers=st.h(tenants.admin))
        assert r.json()["state"] == "awaiting_approval", r.text

        # Hold the node's row: the approved fence queues first, the node's heartbeat second.
        schema = made["attacher"].schema_name
        await conn.execute(text(f'SELECT 1 FROM "{schema}".nodes WHERE id = :id FOR UPDATE'), {"id": node})
        approve = asyncio.create_task(st.att.post(f"/v1/nodes/{node}/fence", headers=st.h(tenants.admin)))
        await eventually(lambda: _waiters_at_least(conn, 1), what="the fence to queue on the node")
        beat = asyncio.create_task(register_node(st, node))
        await eventually(lambda: _waiters_at_least(conn, 2), what="the heartbeat to queue on the node")
        await conn.rollback()
        r_approve, r_beat = await asyncio.wait_for(asyncio.gather(approve, beat), 15.0)
        assert r_approve.status_code == 200, r_approve.text
        assert r_beat.status_code == 200, r_beat.text

        # The fence started first, so the heartbeat must be told so, and the node must not
        # have been set back to alive while the fence runs.
        reply = r_beat.json()
        assert reply["fenced"] is True, reply
        assert reply["state"] in ("fencing", "fenced"), reply
        await eventually(lambda: _state_in(st, node, "fenced"), what="the fence to complete")


async def _waiters_at_least(conn: AsyncConnection, n: int) -> bool:
    return await waiting_on_locks(conn) >= n


async def _done_or_waiting(task: asyncio.Task[Any], conn: AsyncConnection, n: int) -> bool:
    return task.done() or await waiting_on_locks(conn) >= n


async def _state_in(st: Stack, node_id: str, *states: str) -> bool:
    return await node_state(st, node_id) in states

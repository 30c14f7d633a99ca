"""Outbox relay and durable consumers against a real nats-server and a real database.

The session shares one nats-server and so one BERTH_EVENTS stream (only one stream may
cover `berth.events.>`): every test uses its own tenant token in subjects and its own
durable consumer names, and reads back only its own subjects.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.bus import Bus, CloudEvent, new_event
from berth_shared.bus.consumer import EventConsumer, TransientError
from berth_shared.db import BusTables, Database, add_bus_tables, make_database
from berth_shared.db.outbox import EventWriter, OutboxRelay, enqueue
from berth_shared.natsserver import NatsServer
from berth_shared.settings import Settings
from berth_shared.telemetry import Metrics
from berth_testing import eventually

STREAM = Settings().events_stream


@dataclass
class Env:
    db: Database
    tables: BusTables
    applied: Table  # a stand-in for a consumer's own state
    bus: Bus
    tenant: str
    metrics: Metrics = field(default_factory=lambda: Metrics("test"))

    @property
    def subjects(self) -> str:
        return f"berth.events.{self.tenant}.>"

    def event(self, verb: str = "created", **data: Any) -> tuple[str, CloudEvent]:
        return new_event(
            service="test",
            tenant=self.tenant,
            noun="volume",
            verb=verb,
            subject_id=f"vol-{uuid.uuid4().hex[:6]}",
            data=data,
        )

    async def stream_messages(self) -> list[RawStreamMsg]:
        """Every message of this test's tenant in the stream, in order."""
        out: list[RawStreamMsg] = []
        seq = 1
        while True:
            try:
                msg = await self.bus.js.get_msg(STREAM, seq=seq, subject=self.subjects, next=True)
            except NotFoundError:
                return out
            out.append(msg)
            assert msg.seq is not None
            seq = msg.seq + 1

    async def publish(self, subject: str, payload: bytes, msg_id: str | None = None) -> None:
        ack = await self.bus.js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id} if msg_id else None)
        assert ack.stream == STREAM

    async def count(self, table: Table, **where: Any) -> int:
        query = select(func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        async with self.db.sessions() as s:
            return int((await s.execute(query)).scalar_one())

    async def parked(self) -> list[Any]:
        pm = self.tables.parked_messages
        async with self.db.sessions() as s:
            return list((await s.execute(select(pm).order_by(pm.c.id))).all())


@pytest.fixture
async def env(nats_server: NatsServer, db_url: str | None, tmp_path: Path) -> AsyncIterator[Env]:
    schema = f"bus_{uuid.uuid4().hex[:10]}"
    db = await make_database(db_url or f"sqlite:///{tmp_path / 'db' / 'bus.db'}", schema)
    metadata = MetaData()
    tables = add_bus_tables(metadata)
    applied = Table(
        "applied", metadata, Column("event_id", String(64), primary_key=True), Column("n", Integer, nullable=False)
    )
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    bus = await Bus.connect(nats_server.url, "test")
    await bus.ensure_events_stream(STREAM)
    try:
        yield Env(db, tables, applied, bus, f"t{uuid.uuid4().hex[:10]}")
    finally:
        await bus.close()
        if not db.is_sqlite:
            async with db.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await db.dispose()


@pytest.fixture
async def consumers(env: Env) -> AsyncIterator[Callable[..., Awaitable[EventConsumer]]]:
    """Start EventConsumers on this test's subjects; stop them and delete them at the end."""
    started: list[EventConsumer] = []

    async def start(handler: Callable[[CloudEvent, AsyncSession], Awaitable[None]], **kw: Any) -> EventConsumer:
        consumer = EventConsumer(
            env.bus,
            env.db,
            env.tables,
            stream=STREAM,
            durable=f"test-{uuid.uuid4().hex[:12]}",
            filter_subject=env.subjects,
            handler=handler,
            **kw,
        )
        await consumer.start()
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop()
        await env.bus.js.delete_consumer(STREAM, consumer.durable)


async def drained(env: Env, consumer: EventConsumer, messages: int) -> bool:
    """True once the consumer has been handed `messages` messages and settled every one."""
    info = await env.bus.js.consumer_info(STREAM, consumer.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0 and (info.delivered.consumer_seq or 0) >= messages


# -- database helpers ------------------------------------------------------------------


async def test_transaction_commits_or_rolls_back(env: Env) -> None:
    async with env.db.transaction() as s:
        await s.execute(env.applied.insert().values(event_id="a", n=1))
    with pytest.raises(RuntimeError):
        async with env.db.transaction() as s:
            await s.execute(env.applied.insert().values(event_id="b", n=1))
            raise RuntimeError("boom")
    assert await env.count(env.applied) == 1


async def test_schema_names_are_checked(db_url: str | None) -> None:
    if db_url is None:
        pytest.skip("SQLite has one file per service, no schema")
    for bad in ('x"; DROP SCHEMA public; --', "Upper", "bus\n", "1abc"):
        with pytest.raises(ValueError):
            await make_database(db_url, bad)


# -- outbox relay ----------------------------------------------------------------------


async def test_relay_publishes_with_event_id_as_msg_id(env: Env) -> None:
    relay = OutboxRelay(env.db, env.tables, env.bus, env.metrics)
    events = [env.event(verb, n=i) for i, verb in enumerate(("created", "expanded", "deleted"))]
    async with env.db.transaction() as s:
        for subject, ev in events:
            await enqueue(s, env.tables, subject, ev)
    assert await relay.relay_once() == 3
    assert await relay.relay_once() == 0

    msgs = await env.stream_messages()
    assert [m.subject for m in msgs] == [subject for subject, _ in events]
    for msg, (_, ev) in zip(msgs, events, strict=True):
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == ev.id
        assert msg.data is not None
        assert CloudEvent.model_validate_json(msg.data) == ev
    assert await env.count(env.tables.outbox, published_at=None) == 0


async def test_unpublished_rows_are_not_relayed_before_commit(env: Env) -> None:
    relay = OutboxRelay(env.db, env.tables, env.bus, env.metrics)
    with pytest.raises(RuntimeError):
        async with env.db.transaction() as s:
            await enqueue(s, env.tables, *env.event())
            raise RuntimeError("the state change failed")
    assert await relay.relay_once() == 0
    assert await env.stream_messages() == []


async def test_republish_after_crash_is_deduplicated(env: Env) -> None:
    """The relay died between publishing and marking rows: the retry must not duplicate."""
    relay = OutboxRelay(env.db, env.tables, env.bus, env.metrics)
    async with env.db.transaction() as s:
        for i in range(5):
            await enqueue(s, env.tables, *env.event(n=i))
    assert await relay.relay_once() == 5
    async with env.db.transaction() as s:
        await s.execute(update(env.tables.outbox).values(published_at=None))

    assert await relay.relay_once() == 5
    msgs = await env.stream_messages()
    assert len(msgs) == 5
    assert len({m.headers["Nats-Msg-Id"] for m in msgs if m.headers}) == 5
    assert await env.count(env.tables.outbox, published_at=None) == 0


async def test_relay_keeps_what_it_published_when_a_publish_fails(env: Env) -> None:
    """A row no stream takes (here: outside berth.events.>) stops the batch; the rows
    before it stay marked so they are not sent again, the rest waits for the next try."""
    relay = OutboxRelay(env.db, env.tables, env.bus, env.metrics)
    good_subject, good = env.event("created")
    _, stray = env.event("expanded")
    later_subject, later = env.event("deleted")
    async with env.db.transaction() as s:
        await enqueue(s, env.tables, good_subject, good)
        await enqueue(s, env.tables, f"berth.nostream.{env.tenant}", stray)
        await enqueue(s, env.tables, later_subject, later)
    with pytest.raises(RuntimeError):
        await relay.relay_once()
    ob = env.tables.outbox
    async with env.db.sessions() as s:
        pending = (await s.execute(select(ob.c.event_id).where(ob.c.published_at.is_(None)).order_by(ob.c.seq))).all()
    assert [r.event_id for r in pending] == [stray.id, later.id]


async def test_relay_loop_publishes_on_notify(env: Env) -> None:
    # A long poll interval: only notify() can make this quick.
    relay = OutboxRelay(env.db, env.tables, env.bus, env.metrics, poll_interval=30.0)
    relay.start()
    try:
        async with env.db.transaction() as s:
            await enqueue(s, env.tables, *env.event())
        relay.notify()

        async def published() -> bool:
            return await env.count(env.tables.outbox, published_at=None) == 0

        await eventually(published, within=5.0, what="the relay loop to publish")
        assert len(await env.stream_messages()) == 1
    finally:
        await relay.stop()


async def test_relay_publishes_what_a_commit_hands_over_and_nothing_rolled_back(env: Env) -> None:
    """Events written through an EventWriter reach the relay at their commit and go out
    without a notify() or a poll (30 s here); a rolled-back transaction's never do."""
    relay = OutboxRelay(env.db, env.tables, env.bus, env.metrics, poll_interval=30.0)
    writer = EventWriter("test", env.tables, relay)
    relay.start()
    try:
        # Idle: its first read of the outbox done.
        await eventually(lambda: len(relay._wake._waiters) > 0, within=5.0, what="the relay waiting")
        with pytest.raises(RuntimeError):
            async with env.db.transaction() as s:
                await writer.emit(s, env.tenant, "volume", "deleted", "vol-gone", {})
                raise RuntimeError("the state change failed")
        async with env.db.transaction() as s:
            await writer.emit_many(s, [(env.tenant, "volume", "created", f"vol-{i}", {"n": i}) for i in range(3)])
        async with env.db.transaction() as s:
            await writer.emit(s, env.tenant, "volume", "expanded", "vol-0", {})

        async def published() -> bool:
            return await env.count(env.tables.outbox, published_at=None) == 0

        await eventually(published, within=5.0, what="the handed-over events published")
        msgs = await env.stream_messages()
        verbs = [str(m.subject).rsplit(".", 1)[1] for m in msgs]
        assert verbs == ["created", "created", "created", "expanded"]
        assert await env.count(env.tables.outbox) == 4  # the rolled-back row never existed
    finally:
        await relay.stop()


async def test_relay_stops_when_a_notify_lands_as_it_is_cancelled(env: Env) -> None:
    relay = OutboxRelay(env.db, env.tables, env.bus, env.metrics, poll_interval=30.0)
    relay.start()
    # Idle: its first pass over the outbox done, waiting for a notify.
    await eventually(lambda: len(relay._wake._waiters) > 0, within=5.0, what="the relay waiting")
    # A commit's notify() in the same loop step as the cancel: asyncio.wait_for on Python
    # 3.11 returned the wake-up then and dropped the cancellation, so stop() never returned.
    async with asyncio.timeout(5.0) as limit:
        relay.notify()
        await relay.stop()  # cancels in the same step as the notify (no task in between)
    # (stop() swallows the CancelledError of a timeout: ask the timeout instead.)
    assert not limit.expired(), "the relay ignored its cancellation"
    assert relay._task is not None and relay._task.cancelled()


# -- consumers -------------------------------------------------------------------------


async def test_consumer_applies_each_event_once(env: Env, consumers: Any) -> None:
    calls: list[str] = []

    async def handler(ev: CloudEvent, session: AsyncSession) -> None:
        calls.append(ev.id)
        await session.execute(env.applied.insert().values(event_id=ev.id, n=len(calls)))

    subject, ev = env.event()
    other_subject, other = env.event("deleted")
    # The same event twice in the stream, as after a relay retry outside the duplicate window.
    await env.publish(subject, ev.model_dump_json().encode(), msg_id=f"{ev.id}-first")
    await env.publish(subject, ev.model_dump_json().encode(), msg_id=f"{ev.id}-again")
    await env.publish(other_subject, other.model_dump_json().encode(), msg_id=other.id)
    consumer = await consumers(handler)

    await eventually(lambda: drained(env, consumer, 3), what="three deliveries settled")
    assert calls == [ev.id, other.id]
    assert await env.count(env.applied) == 2
    assert await env.count(env.tables.processed_events, consumer=consumer.durable) == 2
    assert await env.parked() == []


async def test_transient_error_naks_then_succeeds(env: Env, consumers: Any) -> None:
    attempts: list[int] = []

    async def handler(ev: CloudEvent, session: AsyncSession) -> None:
        attempts.append(1)
        # Written, then rolled back with the failed attempt: never applied twice.
        await session.execute(env.applied.insert().values(event_id=ev.id, n=len(attempts)))
        if len(attempts) == 1:
            raise TransientError("database of a dependency is restarting")

    subject, ev = env.event()
    await env.publish(subject, ev.model_dump_json().encode(), msg_id=ev.id)
    consumer = await consumers(handler)

    await eventually(lambda: drained(env, consumer, 2), what="redelivery after nak")
    assert len(attempts) == 2
    async with env.db.sessions() as s:
        assert (await s.execute(select(env.applied.c.n))).scalars().all() == [2]
    info = await env.bus.js.consumer_info(STREAM, consumer.durable)
    assert info.num_redelivered == 0  # settled: nothing waits for another delivery
    assert await env.parked() == []


async def test_message_that_is_not_a_cloudevent_is_parked(env: Env, consumers: Any) -> None:
    calls: list[str] = []

    async def handler(ev: CloudEvent, session: AsyncSession) -> None:
        calls.append(ev.id)

    subject, ev = env.event()
    await env.publish(subject, b"not json at all", msg_id=None)
    await env.publish(subject, b'{"id": "x", "source": "someone"}', msg_id=None)
    await env.publish(subject, ev.model_dump_json().encode(), msg_id=ev.id)
    consumer = await consumers(handler)

    await eventually(lambda: drained(env, consumer, 3), what="all three settled")
    parked = await env.parked()
    assert [(p.payload, p.deliveries, p.consumer) for p in parked] == [
        ("not json at all", 1, consumer.durable),
        ('{"id": "x", "source": "someone"}', 1, consumer.durable),
    ]
    assert all(p.reason.startswith("not a CloudEvent") and p.subject == subject for p in parked)
    assert calls == [ev.id]  # the stream goes on after the poison


async def test_handler_bug_parks_and_terms(env: Env, consumers: Any) -> None:
    calls: list[str] = []

    async def handler(ev: CloudEvent, session: AsyncSession) -> None:
        calls.append(ev.id)
        if ev.data.get("poison"):
            raise ValueError("cannot handle this event")

    subject, bad = env.event(poison=True)
    _, good = env.event()
    await env.publish(subject, bad.model_dump_json().encode(), msg_id=bad.id)
    await env.publish(subject, good.model_dump_json().encode(), msg_id=good.id)
    consumer = await consumers(handler)

    # Settled means term()'d: a message left un-acked or nak'd would still be pending.
    await eventually(lambda: drained(env, consumer, 2), what="both settled")
    [parked] = await env.parked()
    assert parked.reason == "ValueError: cannot handle this event"
    assert parked.headers["Nats-Msg-Id"] == bad.id
    assert CloudEvent.model_validate_json(parked.payload) == bad
    assert calls == [bad.id, good.id]
    info = await env.bus.js.consumer_info(STREAM, consumer.durable)
    assert info.num_ack_pending == 0 and info.num_redelivered == 0
    assert await env.count(env.tables.processed_events, consumer=consumer.durable) == 1


async def test_handler_integrity_error_is_not_mistaken_for_a_duplicate(env: Env, consumers: Any) -> None:
    """Only a concurrent insert of the same processed_events row means "already applied";
    the handler's own constraint violation is a failed event, not a silent ack."""
    async with env.db.transaction() as s:
        await s.execute(env.applied.insert().values(event_id="taken", n=0))

    async def handler(ev: CloudEvent, session: AsyncSession) -> None:
        await session.execute(env.applied.insert().values(event_id="taken", n=1))

    subject, ev = env.event()
    await env.publish(subject, ev.model_dump_json().encode(), msg_id=ev.id)
    consumer = await consumers(handler)

    await eventually(lambda: drained(env, consumer, 1), what="the message settled")
    [parked] = await env.parked()
    assert "IntegrityError" in parked.reason
    assert await env.count(env.tables.processed_events, consumer=consumer.durable) == 0


async def test_max_deliver_exhausted_parks(env: Env, consumers: Any) -> None:
    attempts: list[int] = []

    async def handler(ev: CloudEvent, session: AsyncSession) -> None:
        attempts.append(1)
        raise TransientError("still down")

    subject, ev = env.event()
    await env.publish(subject, ev.model_dump_json().encode(), msg_id=ev.id)
    consumer = await consumers(handler, max_deliver=2)

    async def parked() -> bool:
        return len(await env.parked()) == 1

    await eventually(parked, what="the message to be parked")
    [row] = await env.parked()
    assert row.deliveries == 2
    assert row.reason == "gave up after 2 deliveries: still down"
    assert len(attempts) == 2
    await eventually(lambda: drained(env, consumer, 2), what="the consumer to settle")


async def test_consumer_survives_a_failure_to_park(env: Env, consumers: Any) -> None:
    """Parking itself fails (here: the table is gone): the message stays un-acked for a
    later redelivery, and the consumer goes on with the next messages."""
    async with env.db.engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: env.tables.parked_messages.drop(sync_conn))
    calls: list[str] = []

    async def handler(ev: CloudEvent, session: AsyncSession) -> None:
        calls.append(ev.id)

    subject, ev = env.event()
    await env.publish(subject, b"poison", msg_id=None)
    await env.publish(subject, ev.model_dump_json().encode(), msg_id=ev.id)
    await consumers(handler)

    await eventually(lambda: calls == [ev.id], what="the next message to be handled")

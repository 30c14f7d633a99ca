"""Transactional outbox: events are rows written with the state change, then relayed.

A crash between publish and marking the row published republishes with the same
`Nats-Msg-Id`, which JetStream's duplicate window drops; consumers also dedup by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, NamedTuple

from nats.errors import Error as NatsError
from nats.js.api import PubAck
from sqlalchemy import Executable, bindparam, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from berth_shared.aio import wait_event
from berth_shared.bus.client import Bus
from berth_shared.bus.envelope import CloudEvent, new_event
from berth_shared.db.engine import Database
from berth_shared.db.tables import BusTables
from berth_shared.faults import checkpoint
from berth_shared.telemetry import Metrics, inject_headers

log = logging.getLogger(__name__)

# An event to emit: (tenant, noun, verb, subject id, data).
Emitted = tuple[str, str, str, str, dict[str, Any]]


def _outbox_row(subject: str, event: CloudEvent, traceparent: str | None) -> dict[str, Any]:
    if event.traceparent is None:
        event.traceparent = traceparent
    return {"event_id": event.id, "subject": subject, "payload": event.model_dump_json()}


def _current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    inject_headers(carrier)
    return carrier.get("traceparent")


async def enqueue(session: AsyncSession, tables: BusTables, subject: str, event: CloudEvent) -> None:
    await enqueue_many(session, tables, [(subject, event)])


async def enqueue_many(
    session: AsyncSession,
    tables: BusTables,
    events: list[tuple[str, CloudEvent]],
    relay: OutboxRelay | None = None,
) -> None:
    """Several events in one statement (a batch finishing together: one round trip). With
    `relay`, the rows are handed to it when the session commits (see OutboxRelay.track)."""
    if not events:
        return
    traceparent = _current_traceparent()
    rows = [_outbox_row(subject, event, traceparent) for subject, event in events]
    await session.execute(tables.outbox.insert(), rows)
    if relay is not None:
        relay.track(session, [Pending(r["event_id"], r["subject"], r["payload"]) for r in rows])


class Pending(NamedTuple):
    """An outbox row waiting to be published."""

    event_id: str
    subject: str
    payload: str


_TRACKED = "berth.outbox.tracked"  # session.info key: the rows this session wrote
_LISTENING = "berth.outbox.listening"  # session.info key: its commit hands them to the relay
_HANDED_LIMIT = 10_000  # rows held in memory at most; beyond, the oldest wait for a read


class OutboxRelay:
    """Publishes the outbox. The rows a transaction wrote through `EventWriter` are handed
    to the relay in memory once it commits, and published from there: no read of the
    outbox per commit, and each replica publishes its own events (not, as well, those of
    the other replicas that a read of every pending row finds in flight). The outbox is
    read as well on `notify()`, every `poll_interval`, and after a failure: what a crash or
    an outage left behind goes out then."""

    def __init__(self, db: Database, tables: BusTables, bus: Bus, metrics: Metrics, poll_interval: float = 1.0) -> None:
        self.db = db
        self.tables = tables
        self.bus = bus
        self.metrics = metrics
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._read_due = True  # the first pass reads what an earlier run left
        self._handed: list[Pending] = []
        self._task: asyncio.Task[None] | None = None
        # Built once: the relay runs after every commit that wrote events.
        ob = tables.outbox
        self._queries: dict[int, Executable] = {}
        self._mark = (
            update(ob)
            .where(ob.c.event_id.in_(bindparam("p_ids", expanding=True)))
            .values(published_at=bindparam("p_at"))
        )

    def notify(self) -> None:
        """Called after a commit that wrote events, so they go out without waiting a poll:
        the next pass reads the outbox (events a session wrote through `EventWriter` need
        no notify: they are handed over at the commit)."""
        self._read_due = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def track(self, session: AsyncSession, rows: list[Pending]) -> None:
        """Hand `rows` to this relay when `session` commits; forget them if it rolls back
        (any rollback, a savepoint's too: those rows then wait for the next read of the
        outbox, never is a row published that was not committed)."""
        if not session.info.get(_LISTENING):  # once per session, however often it commits
            session.info[_LISTENING] = True
            sync = session.sync_session
            sa_event.listen(sync, "after_commit", self._committed)
            sa_event.listen(sync, "after_soft_rollback", self._rolled_back)
        session.info.setdefault(_TRACKED, []).extend(rows)

    def _committed(self, session: Session) -> None:
        rows = session.info.pop(_TRACKED, None)
        if rows:
            self._handed.extend(rows)
            if len(self._handed) > _HANDED_LIMIT:  # a relay not running (stopped, stalled)
                del self._handed[: len(self._handed) - _HANDED_LIMIT]
                self._read_due = True  # those dropped are in the outbox: the next read finds them
            self._wake.set()

    def _rolled_back(self, session: Session, _previous: Any) -> None:
        session.info.pop(_TRACKED, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                while self._handed:
                    rows, self._handed = self._handed[:200], self._handed[200:]
                    try:
                        await self._publish(rows)
                    except Exception:
                        self._read_due = True  # they stay in the outbox: the next read finds them
                        raise
                if self._read_due:
                    self._read_due = False
                    while await self.relay_once():
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down, DB blip: keep the rows, try again later
                log.warning("outbox relay paused: %s", exc)
                self._read_due = True
                self._handed = []  # in the outbox all the same: the next read finds them
                await wait_event(self._wake, self.poll_interval)
                self._wake.clear()
                continue
            if not self._handed and not self._read_due:
                if not await wait_event(self._wake, self.poll_interval):
                    self._read_due = True
                self._wake.clear()

    async def relay_once(self, batch: int = 200) -> int:
        """Publish one batch of pending events read from the outbox; return how many went out.

        No transaction is held while publishing: on SQLite that would hold the database's
        write lock for as long as NATS takes to answer (seconds, when it is down). Two
        replicas may then publish the same row; `Nats-Msg-Id` makes JetStream keep one.
        """
        async with self.db.statements() as conn:
            rows = [Pending(r.event_id, r.subject, r.payload) for r in await conn.execute(self._pending(batch))]
        if not rows:
            return 0
        published = await self._publish(rows)
        if self._handed:  # what this read published needs no second publish from memory
            sent = {r.event_id for r in rows}
            self._handed = [r for r in self._handed if r.event_id not in sent]
        return published

    async def _publish(self, rows: list[Pending]) -> int:
        """Publish `rows` in order and mark those acknowledged (in order, up to the first
        that was not); RuntimeError if not all of them went out."""
        done: list[str] = []
        acks: list[asyncio.Future[PubAck]] = []
        try:
            for r in rows:
                acks.append(
                    await self.bus.js.publish_async(
                        r.subject, r.payload.encode(), headers={"Nats-Msg-Id": r.event_id}, wait_stall=5.0
                    )
                )
            # One wait for the whole batch (not a wait_for, and its task, per ack).
            await asyncio.wait(acks, timeout=5.0)
            for row, fut in zip(rows, acks, strict=False):
                if not fut.done() or fut.cancelled() or fut.exception() is not None:
                    why = "no ack within 5 s" if not fut.done() else repr(fut.exception())
                    log.warning("outbox publish failed after %d of %d: %s", len(done), len(rows), why)
                    break
                done.append(row.event_id)
        except (NatsError, TimeoutError) as exc:
            log.warning("outbox publish failed after %d of %d: %s", len(done), len(rows), exc)
        finally:
            # An ack that never comes would hold one of the client's pending-publish
            # slots for good; enough of them and publish_async stalls forever.
            for fut in acks:
                fut.cancel()
        if done:
            checkpoint("outbox.after_publish")
            async with self.db.statements() as conn:
                await conn.execute(self._mark, {"p_ids": done, "p_at": datetime.now(UTC)})
        self.metrics.events_published.labels(self.bus.service).inc(len(done))
        if len(done) < len(rows):
            raise RuntimeError(f"outbox relay published {len(done)} of {len(rows)} events")
        return len(done)

    def _pending(self, batch: int) -> Executable:
        query = self._queries.get(batch)
        if query is None:
            ob = self.tables.outbox
            cols = select(ob.c.seq, ob.c.event_id, ob.c.subject, ob.c.payload)
            query = cols.where(ob.c.published_at.is_(None)).order_by(ob.c.seq).limit(batch)
            self._queries[batch] = query
        return query


class EventWriter:
    """What a service's use cases call to emit: the event goes into the outbox inside the
    caller's transaction, and to the relay when that transaction commits."""

    def __init__(self, service: str, tables: BusTables, relay: OutboxRelay | None) -> None:
        self.service = service
        self.tables = tables
        self.relay = relay

    async def emit(
        self, session: AsyncSession, tenant: str, noun: str, verb: str, subject_id: str, data: dict[str, Any]
    ) -> None:
        subject, event = new_event(
            service=self.service, tenant=tenant, noun=noun, verb=verb, subject_id=subject_id, data=data
        )
        await enqueue_many(session, self.tables, [(subject, event)], self.relay)

    async def emit_many(self, session: AsyncSession, events: list[Emitted]) -> None:
        """Several events (tenant, noun, verb, subject id, data) in one INSERT."""
        built = [
            new_event(service=self.service, tenant=tenant, noun=noun, verb=verb, subject_id=sid, data=data)
            for tenant, noun, verb, sid, data in events
        ]
        await enqueue_many(session, self.tables, built, self.relay)

    def notify(self) -> None:
        """Wake the relay (the commit already has: what `emit` wrote was handed to it then,
        so no read of the outbox is needed for it)."""
        if self.relay:
            self.relay.wake()

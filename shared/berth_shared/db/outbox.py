"""Transactional outbox: events are rows written with the state change, then relayed.

A crash between publish and marking the row published republishes with the same
`Nats-Msg-Id`, which JetStream's duplicate window drops; consumers also dedup by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from nats.errors import Error as NatsError
from nats.js.api import PubAck
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

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


async def enqueue_many(session: AsyncSession, tables: BusTables, events: list[tuple[str, CloudEvent]]) -> None:
    """Several events in one statement (a batch finishing together: one round trip)."""
    if not events:
        return
    traceparent = _current_traceparent()
    rows = [_outbox_row(subject, event, traceparent) for subject, event in events]
    await session.execute(tables.outbox.insert(), rows)


class OutboxRelay:
    def __init__(self, db: Database, tables: BusTables, bus: Bus, metrics: Metrics, poll_interval: float = 1.0) -> None:
        self.db = db
        self.tables = tables
        self.bus = bus
        self.metrics = metrics
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Called after a commit that wrote events, so they go out without waiting a poll."""
        self._wake.set()

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
                while await self.relay_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down, DB blip: keep the rows, try again later
                log.warning("outbox relay paused: %s", exc)
            await wait_event(self._wake, self.poll_interval)
            self._wake.clear()

    async def relay_once(self, batch: int = 200) -> int:
        """Publish one batch of pending events; return how many went out.

        No transaction is held while publishing: on SQLite that would hold the database's
        write lock for as long as NATS takes to answer (seconds, when it is down). Two
        replicas may then publish the same row; `Nats-Msg-Id` makes JetStream keep one.
        """
        ob = self.tables.outbox
        async with self.db.reads() as session:  # one statement: no transaction around it
            query = select(ob.c.seq, ob.c.event_id, ob.c.subject, ob.c.payload).where(ob.c.published_at.is_(None))
            rows = (await session.execute(query.order_by(ob.c.seq).limit(batch))).all()
        if not rows:
            return 0
        done: list[int] = []
        acks: list[asyncio.Future[PubAck]] = []
        try:
            for r in rows:
                acks.append(
                    await self.bus.js.publish_async(
                        r.subject, r.payload.encode(), headers={"Nats-Msg-Id": r.event_id}, wait_stall=5.0
                    )
                )
            for row, fut in zip(rows, acks, strict=False):
                await asyncio.wait_for(fut, 5.0)
                done.append(row.seq)
        except (NatsError, TimeoutError) as exc:
            log.warning("outbox publish failed after %d of %d: %s", len(done), len(rows), exc)
        finally:
            # An ack that never comes would hold one of the client's pending-publish
            # slots for good; enough of them and publish_async stalls forever.
            for fut in acks:
                fut.cancel()
        if done:
            checkpoint("outbox.after_publish")
            async with self.db.transaction() as session:
                await session.execute(update(ob).where(ob.c.seq.in_(done)).values(published_at=datetime.now(UTC)))
        self.metrics.events_published.labels(self.bus.service).inc(len(done))
        if len(done) < len(rows):
            raise RuntimeError(f"outbox relay published {len(done)} of {len(rows)} events")
        return len(done)


class EventWriter:
    """What a service's use cases call to emit: the event goes into the outbox inside the
    caller's transaction, and `notify()` after the commit wakes the relay."""

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
        await enqueue(session, self.tables, subject, event)

    async def emit_many(self, session: AsyncSession, events: list[Emitted]) -> None:
        """Several events (tenant, noun, verb, subject id, data) in one INSERT."""
        built = [
            new_event(service=self.service, tenant=tenant, noun=noun, verb=verb, subject_id=sid, data=data)
            for tenant, noun, verb, sid, data in events
        ]
        await enqueue_many(session, self.tables, built)

    def notify(self) -> None:
        if self.relay:
            self.relay.notify()

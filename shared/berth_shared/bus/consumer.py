"""Durable pull consumers: explicit ack after the handler's DB commit, dedup by event id,
nak with back-off on transient errors, park then term() poison messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.bus.client import Bus
from berth_shared.bus.envelope import CloudEvent
from berth_shared.db.engine import Database
from berth_shared.db.tables import BusTables

log = logging.getLogger(__name__)

EventHandler = Callable[[CloudEvent, AsyncSession], Awaitable[None]]


class TransientError(Exception):
    """Raised by a handler when a retry later may succeed (nak with delay)."""


class EventConsumer:
    def __init__(
        self,
        bus: Bus,
        db: Database,
        tables: BusTables,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        handler: EventHandler,
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        batch: int = 64,
    ) -> None:
        self.bus = bus
        self.db = db
        self.tables = tables
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self.handler = handler
        self.max_deliver = max_deliver
        self.ack_wait = ack_wait
        self.batch = batch
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        config = ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=self.max_deliver,
            ack_wait=self.ack_wait,
        )
        self._sub = await self.bus.js.pull_subscribe(
            self.filter_subject, durable=self.durable, stream=self.stream, config=config
        )
        self._task = asyncio.create_task(self._run(self._sub), name=f"consumer-{self.durable}")

    async def stop(self) -> None:
        """Stop fetching; messages in flight and un-acked are redelivered later.

        The pull subscription is removed too: left behind, it would hold the connection's
        drain (`Bus.close`) for its whole timeout. The durable consumer stays on the server.
        """
        # The flag as well as the cancel: on Python 3.11 a cancel that lands as the fetch's
        # own wait_for times out comes back as a TimeoutError, which the loop takes for an
        # empty fetch: it would fetch on forever and this stop would never return.
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping:
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except (NatsTimeout, TimeoutError):  # nats-py raises the bare asyncio one too
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS restarting: wait and fetch again
                log.warning("consumer %s fetch failed: %s", self.durable, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                try:
                    await self.handle(msg)
                except Exception:
                    # Could not even park or ack (DB or NATS down): leave the message
                    # un-acked, it comes back after ack_wait; the consumer carries on.
                    log.exception("consumer %s: could not settle a message on %s", self.durable, msg.subject)

    async def handle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered if msg.metadata else 1
        try:
            event = CloudEvent.model_validate_json(msg.data)
        except ValidationError as exc:
            await self._park(msg, f"not a CloudEvent: {exc.errors(include_url=False)[:3]}", deliveries)
            return
        try:
            await self._process(event)
        except TransientError as exc:
            if deliveries >= self.max_deliver:
                await self._park(msg, f"gave up after {deliveries} deliveries: {exc}", deliveries)
            else:
                await msg.nak(delay=min(30.0, 0.5 * 2**deliveries))
            return
        except Exception as exc:
            log.exception("consumer %s: handler failed on %s", self.durable, event.id)
            await self._park(msg, f"{type(exc).__name__}: {exc}", deliveries)
            return
        await msg.ack()

    async def _process(self, event: CloudEvent) -> None:
        pe = self.tables.processed_events
        try:
            async with self.db.transaction() as session:
                seen = await session.execute(
                    select(pe.c.event_id).where(pe.c.consumer == self.durable, pe.c.event_id == event.id)
                )
                if seen.first() is not None:
                    return  # a redelivery or a republish: already applied
                await self.handler(event, session)
                await session.execute(pe.insert().values(consumer=self.durable, event_id=event.id))
        except IntegrityError:
            # Another replica applied the same event concurrently and our transaction rolled
            # back; any other constraint violation is the handler's and must not be acked.
            if not await self._already_processed(event.id):
                raise
            log.debug("consumer %s: duplicate event %s", self.durable, event.id)

    async def _already_processed(self, event_id: str) -> bool:
        pe = self.tables.processed_events
        async with self.db.sessions() as session:
            seen = await session.execute(
                select(pe.c.event_id).where(pe.c.consumer == self.durable, pe.c.event_id == event_id)
            )
            return seen.first() is not None

    async def _park(self, msg: Msg, reason: str, deliveries: int) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                self.tables.parked_messages.insert().values(
                    consumer=self.durable,
                    subject=msg.subject,
                    headers=dict(msg.headers or {}),
                    payload=msg.data.decode(errors="replace"),
                    reason=reason[:2000],
                    deliveries=deliveries,
                )
            )
        await msg.term()
        log.warning(
            "consumer %s parked a message", self.durable, extra={"subject": msg.subject, "reason": reason[:200]}
        )

"""The alerts service's use cases: ingest (HTTP and bus), the flusher, the workers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from berth_alerts import tables as t
from berth_alerts.committer import GroupCommitter, RecentBodies
from berth_alerts.config import AlertsConfig, AlertsSettings
from berth_alerts.delivery import ReceiverWorker
from berth_alerts.events import base_type, event_alert
from berth_alerts.flush import FLUSH_BATCH, Flushed, Handover, flush_due
from berth_alerts.formats import PayloadError
from berth_alerts.metrics import AlertMetrics
from berth_alerts.model import Alert
from berth_alerts.queue import prune_finished, record_finished, release_own
from berth_alerts.render import check_templates
from berth_alerts.store import IngestResult, Routing, expire_alerts, ingest
from berth_shared.aio import stop_tasks, wait_event
from berth_shared.auth import Principal
from berth_shared.bus import CloudEvent
from berth_shared.db import Database
from berth_shared.errors import InvalidArgument

log = logging.getLogger(__name__)
Parser = Callable[[bytes, datetime], list[Alert]]  # the request body, when it came
MAX_KEPT_BODY = 1024 * 1024  # a rejected body is kept up to this size
GAUGE_EVERY_S = 5.0
PRUNE_EVERY_S = 600.0
INGEST_WRITERS = 2


def now() -> datetime:
    return datetime.now(UTC)


class AlertsService:
    def __init__(
        self, db: Database, settings: AlertsSettings, config: AlertsConfig, metrics: AlertMetrics, owner: str
    ) -> None:
        for r in config.receivers:
            check_templates(r)
        self.db = db
        self.settings = settings
        self.routing = Routing(config)
        self.metrics = metrics
        self.owner = owner
        self.flush_wake = asyncio.Event()
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))
        self.workers = {
            r.name: ReceiverWorker(
                db, r, owner, metrics, self.client, poll_s=settings.delivery_poll_s, claim_s=settings.delivery_claim_s
            )
            for r in config.receivers
        }
        self._tasks: list[asyncio.Task[None]] = []
        # Few writers, each committing every request that waited for it at once: a burst of
        # posts queues here, not in the database, where it would hold up flush and delivery.
        # Shorter than resolve_timeout: a repeated post still extends its alerts' endsAt.
        self._inflight: dict[bytes, asyncio.Future[None]] = {}
        self._recent = RecentBodies(ttl_s=min(60.0, config.resolve_timeout_s / 4))
        self.committer = GroupCommitter(db, self.routing, writers=1 if db.is_sqlite else INGEST_WRITERS)

    # -- ingest -------------------------------------------------------------------------

    async def ingest_body(
        self, caller: Principal, source: str, body: bytes, content_type: str | None, parser: Parser
    ) -> IngestResult:
        """Parse, then store in one transaction; a malformed body is kept and refused (400).

        The very same body from the same kind of caller, within a short while of one that
        was committed (a retry, the other Alertmanager of an HA pair), is answered at once:
        it was stored already, and parsing and looking it up again would change nothing."""
        at = now()
        key = self._recent.key(caller, source, body)
        twin = self._inflight.get(key)
        if twin is not None:  # the same body is being committed right now: its outcome is ours
            await asyncio.shield(twin)
        seen = self._recent.get(key)
        if seen is not None:
            self._count(source, IngestResult(duplicate=seen))
            return IngestResult(duplicate=seen)
        try:
            alerts = parser(body, at)
        except PayloadError as exc:
            await self._keep_rejected(caller, source, body, content_type, exc.detail, exc.errors)
            raise InvalidArgument(exc.detail, reason="malformed_payload", errors=exc.errors) from None
        if not caller.is_admin:  # a tenant's alerts are its own: the label cannot be forged
            for a in alerts:
                a.set_label("tenant", caller.tenant)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            result = await self.committer.submit(alerts, at)
            self._recent.put(key, result.accepted)
        finally:
            del self._inflight[key]
            done.set_result(None)
        self._count(source, result)
        self.flush_wake.set()
        return result

    def _count(self, source: str, r: IngestResult) -> None:
        for outcome, n in (("new", r.new), ("changed", r.changed), ("duplicate", r.duplicate)):
            if n:
                self.metrics.received.labels(source, outcome).inc(n)

    async def _keep_rejected(
        self,
        caller: Principal,
        source: str,
        body: bytes,
        content_type: str | None,
        reason: str,
        errors: list[dict[str, str]],
    ) -> None:
        async with self.db.transaction() as s:
            await s.execute(
                t.rejected_payloads.insert().values(
                    source=source,
                    reason=reason[:2000],
                    errors=errors,
                    content_type=(content_type or "")[:255],
                    body=body[:MAX_KEPT_BODY].decode(errors="replace").replace("\x00", "\ufffd"),
                    body_bytes=len(body),
                    tenant=caller.tenant,
                    received_at=now(),
                )
            )
        self.metrics.rejected.labels(source).inc()
        log.warning("rejected a %s payload: %s", source, reason[:200])

    async def on_event(self, event: CloudEvent, session: AsyncSession) -> None:
        """Bus consumer handler: runs inside the consumer's transaction (ack after commit).

        A new consumer reads the stream from its start: events older than event_max_age_s
        are history, not news, and are not told (counted as `stale`)."""
        if (now() - event.time).total_seconds() > self.settings.event_max_age_s:
            self.metrics.received.labels("berth", "stale").inc()
            return
        alert = event_alert(event, self.routing.config.event_severities, now())
        await ingest(session, self.routing, [alert], now())
        self.metrics.bus_events.labels(base_type(event.type), alert.severity).inc()
        self.metrics.received.labels("berth", "new").inc()
        self.flush_wake.set()

    # -- background ---------------------------------------------------------------------

    async def start(self) -> None:
        self.committer.start()
        released = await release_own(self.db, self.owner)
        if released:
            log.info("resuming %d deliveries this replica had in flight", released)
        for r in self.routing.config.receivers:
            if r.type != "none" and not r.resolved_url():
                log.warning("receiver %s has no URL: its notifications will fail", r.name)
        self._tasks.append(asyncio.create_task(self._flusher(), name="alerts-flusher"))
        for w in self.workers.values():
            self._tasks.append(asyncio.create_task(w.run(), name=f"alerts-receiver-{w.receiver.name}"))

    async def stop(self) -> None:
        await self.committer.stop()
        await stop_tasks(*self._tasks)
        for w in self.workers.values():
            await w.drain()
        await self.client.aclose()

    async def flush_once(self) -> Flushed:
        """Record finished deliveries, resolve expired alerts, flush due groups, in one
        transaction; then hand what it claimed to the workers."""
        at = now()
        handover = Handover(
            self.owner, self.settings.delivery_claim_s, {n: w.free_slots() for n, w in self.workers.items()}
        )
        finished = {n: w.take_finished() for n, w in self.workers.items()}
        recorded: dict[str, set[int]] = {}
        try:
            async with self.db.transaction() as s:
                for n, batch in finished.items():
                    if batch:
                        recorded[n] = await record_finished(s, self.owner, [o for o, _ in batch], at)
                await expire_alerts(s, self.routing, at)
                flushed = await flush_due(s, self.routing, at, handover)
        except BaseException:
            for n, batch in finished.items():
                self.workers[n].unrecorded(batch)
            raise
        for n, w in self.workers.items():
            w.recorded(finished[n], recorded.get(n, set()))
            w.hand_over(flushed.handed.get(n, []), backlog=n in flushed.pending)
        return flushed

    async def _flusher(self) -> None:
        gauges_at = pruned_at = 0.0
        while True:
            try:
                if time.monotonic() - pruned_at > PRUNE_EVERY_S:
                    pruned_at = time.monotonic()
                    await self.prune_history()
                if time.monotonic() - gauges_at > GAUGE_EVERY_S:
                    gauges_at = time.monotonic()
                    await self.refresh_gauges()
                if (await self.flush_once()).groups >= FLUSH_BATCH:
                    continue  # a full batch: more are due
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("flush failed")
            await wait_event(self.flush_wake, self.settings.flush_interval_s)
            self.flush_wake.clear()

    async def prune_history(self) -> int:
        """Forget finished notifications older than delivery_history_s."""
        pruned = await prune_finished(self.db, now() - timedelta(seconds=self.settings.delivery_history_s))
        if pruned:
            log.info("pruned %d finished notifications from the delivery history", pruned)
        return pruned

    async def refresh_gauges(self) -> None:
        async with self.db.sessions() as s:
            depth = await s.execute(
                select(t.deliveries.c.receiver, func.count())
                .where(t.deliveries.c.state.in_(("pending", "sending")))
                .group_by(t.deliveries.c.receiver)
            )
            seen: dict[str, int] = {r[0]: int(r[1]) for r in depth.all()}
            # Grouped by the output alias: PostgreSQL sees two renderings of the JSON
            # path (each with its own bound key) as different expressions.
            severity = t.alerts.c.labels["severity"].as_string().label("severity")
            firing = await s.execute(
                select(severity, func.count()).where(t.alerts.c.status == "firing").group_by(literal_column("severity"))
            )
            by_severity: dict[str, int] = {str(r[0] or ""): int(r[1]) for r in firing.all()}
        for name in self.workers:
            self.metrics.queue_depth.labels(name).set(seen.get(name, 0))
        for severity in ("critical", "warning", "info", *by_severity):
            self.metrics.firing.labels(severity).set(by_severity.get(severity, 0))

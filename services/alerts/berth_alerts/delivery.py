"""Delivery workers: one per receiver, sending claimed notifications to its messenger.

Each notification's messages go out in order through the receiver's token bucket; after
each one the queue row records how many alerts got through, so a retry or a restart sends
only the rest. A 429 holds the whole receiver for its Retry-After; other failures back off
exponentially; a 413 splits the rest smaller. Nothing leaves the queue but by delivery,
the receiver's max age (expired) or a persistent refusal (failed), and each is counted.

Most notifications come from the flusher, claimed and in memory (`hand_over`); the worker
claims from the database only when something may wait there (a retry, a backlog, a
notification behind its group's previous one), and on a poll, for another replica's work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import UTC, datetime, timedelta

import httpx

from berth_alerts import queue
from berth_alerts.config import ReceiverConfig
from berth_alerts.metrics import AlertMetrics
from berth_alerts.queue import Claimed, Outcome
from berth_alerts.ratelimit import TokenBucket
from berth_alerts.render import Renderer
from berth_alerts.sender import backoff, send
from berth_shared.aio import wait_event
from berth_shared.db import Database
from berth_shared.faults import checkpoint

log = logging.getLogger(__name__)
# A messenger refusing the request itself (400, 401, 404) this many times: given up, kept as failed.
MAX_REJECTIONS = 5


def now() -> datetime:
    return datetime.now(UTC)


class ReceiverWorker:
    def __init__(
        self,
        db: Database,
        receiver: ReceiverConfig,
        owner: str,
        metrics: AlertMetrics,
        client: httpx.AsyncClient,
        *,
        poll_s: float,
        claim_s: float,
    ) -> None:
        self.db = db
        self.receiver = receiver
        self.owner = owner
        self.metrics = metrics
        self.client = client
        self.poll_s = poll_s
        self.claim_s = claim_s
        self.bucket = TokenBucket(receiver.rate_per_s, receiver.burst)
        self.renderer = Renderer(receiver)
        self.url = receiver.resolved_url()
        self.size_limit = receiver.size_limit
        self.wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        # Finished deliveries, recorded in batches by the flusher's next transaction (or the
        # next claim's): a send's slot is free as soon as the messenger answered.
        self._finished: list[tuple[Outcome, Claimed]] = []
        # Claimed by the flusher, not started yet (with when each must have started): at
        # most what the token bucket lets through at once, sent in order as slots free up,
        # one group's after its previous one (which may still be sending) is done.
        self._handed: deque[tuple[Claimed, float]] = deque()
        self._sending: set[str] = set()  # groups with a notification being sent now
        # Groups with a notification back in the queue (a retry): their next ones queue
        # behind it there, until a claim takes the group's backlog.
        self._requeued: set[str] = set()
        self._release: list[int] = []  # taken back from the handed-over ones: to release
        self._backlog = True  # the database may hold notifications to claim (at start: may)
        self._draining = False
        self._next_poll = 0.0

    async def run(self) -> None:
        await self._loop()

    def free_slots(self) -> int:
        """How many notifications the flusher may claim for this worker now: what the
        receiver takes without waiting (none while a 429 holds it), less those it holds."""
        return max(0, self.bucket.available() - len(self._handed))

    def hand_over(self, claimed: list[Claimed], backlog: bool) -> None:
        """Notifications the flusher claimed for us; `backlog`: it also left some to claim."""
        until = time.monotonic() + self.claim_s / 2  # sent by then, or given back
        for c in claimed:
            if c.group_id in self._requeued:
                self._release.append(c.id)
            else:
                self._handed.append((c, until))
        self._backlog = self._backlog or backlog
        self._start_ready()
        if self._release or backlog:
            self.wake.set()

    def take_finished(self) -> list[tuple[Outcome, Claimed]]:
        """What finished, for the flusher to record in its transaction (`recorded` after)."""
        batch, self._finished = self._finished, []
        return batch

    def unrecorded(self, batch: list[tuple[Outcome, Claimed]]) -> None:
        """Not recorded after all (the transaction failed): the next pass records them."""
        self._finished = batch + self._finished

    async def flush_finished(self) -> None:
        """Record what finished, in a transaction of its own (no claim to share it with)."""
        batch = self.take_finished()
        if not batch:
            return
        try:
            mine = await queue.finish_many(self.db, self.owner, [o for o, _ in batch], now())
        except BaseException:  # the DB is away (or we are stopping): the next pass records them
            self.unrecorded(batch)
            raise
        self.recorded(batch, mine)

    def recorded(self, batch: list[tuple[Outcome, Claimed]], mine: set[int]) -> None:
        at = now()
        for o, c in batch:
            if o.id not in mine:
                continue  # our claim ran out and another replica took it over
            self.metrics.notifications.labels(self.receiver.name, o.state).inc()
            if o.state == "delivered":
                self.metrics.latency.labels(self.receiver.name).observe(
                    max(0.0, (at - c.oldest_change_at).total_seconds())
                )

    def _finish(self, c: Claimed, state: str, error: str | None = None) -> None:
        self._finished.append((Outcome(c.id, state, error), c))
        self.wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("receiver %s: delivery pass failed", self.receiver.name)
            await wait_event(self.wake, self.poll_s)
            self.wake.clear()

    async def tick(self) -> int:
        started = self._start_ready()
        await self._release_taken_back()
        if not self._backlog and time.monotonic() < self._next_poll:
            return started  # nothing known to wait in the database: the flusher records what finished
        free = self.receiver.max_in_flight - len(self._inflight)
        if free <= 0 or self.bucket.wait_time() > self.poll_s:
            await self.flush_finished()
            return started
        self._next_poll = time.monotonic() + self.poll_s
        batch = self.take_finished()
        try:
            res = await queue.claim(
                self.db,
                self.receiver.name,
                self.owner,
                now(),
                limit=free,
                claim_s=self.claim_s,
                max_age_s=self.receiver.max_age_s,
                finished=[o for o, _ in batch],
            )
        except BaseException:  # not recorded: the next pass records them
            self.unrecorded(batch)
            raise
        self._backlog = res.more
        self.recorded(batch, res.finished)
        if res.expired:
            self.metrics.notifications.labels(self.receiver.name, "expired").inc(res.expired)
            log.warning("receiver %s: %d notifications expired undelivered", self.receiver.name, res.expired)
        if res.collapsed:
            self.metrics.notifications.labels(self.receiver.name, "collapsed").inc(res.collapsed)
        for c in res.claimed:
            self._requeued.discard(c.group_id)  # its backlog is claimed: it is in order again
            self._start(c)
        return started + len(res.claimed)

    def _start_ready(self) -> int:
        """Start what was handed over, in order, as slots allow: at once, not on the next
        pass (which may be waiting on the database)."""
        started = 0
        if self._draining:
            return started
        waiting: deque[tuple[Claimed, float]] = deque()
        held: set[str] = set()  # groups with one waiting: the rest of theirs wait behind it
        late: set[str] = set()
        while self._handed and len(self._inflight) < self.receiver.max_in_flight:
            c, until = self._handed.popleft()
            if c.group_id in self._sending or c.group_id in held or c.group_id in late:
                waiting.append((c, until))
                held.add(c.group_id)
            elif time.monotonic() > until:  # a slow messenger: not begun under a claim near its end
                late.add(c.group_id)
            else:
                self._start(c)
                started += 1
        self._handed = waiting + self._handed
        if late:
            self._requeue(late)
        return started

    def _requeue(self, groups: set[str]) -> None:
        """One of these groups' notifications is back in the queue: the ones handed over
        behind it go back too, to be claimed (and collapsed) in order after it."""
        self._release += [c.id for c, _ in self._handed if c.group_id in groups]
        self._handed = deque((c, u) for c, u in self._handed if c.group_id not in groups)
        self._requeued |= groups
        self._backlog = True
        self.wake.set()

    async def _release_taken_back(self) -> None:
        """Release what was taken back from the handed-over ones (requeued, late, or not
        begun at a stop); kept if the database is away: the next pass tries again."""
        ids = list(self._release)
        if ids:
            await queue.release_own(self.db, self.owner, ids)
            del self._release[: len(ids)]

    def _start(self, c: Claimed) -> None:
        self._sending.add(c.group_id)
        task = asyncio.create_task(self._deliver(c))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._start_ready()
        self.wake.set()

    async def drain(self) -> None:
        self._draining = True  # what was handed over and not begun stays unbegun
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        try:
            await self.flush_finished()
            # Claimed, never begun: back to the queue for anyone, at once.
            self._release += [c.id for c, _ in self._handed]
            self._handed.clear()
            await self._release_taken_back()
        except Exception:  # the DB is away: the claims run out, another pass sends them again
            log.exception("receiver %s: could not record %d deliveries", self.receiver.name, len(self._finished))

    async def _deliver(self, c: Claimed) -> None:
        try:
            await self._send_all(c)
        except asyncio.CancelledError:
            raise
        except Exception:  # the DB went away mid-way: the claim runs out, it is retried
            log.exception("receiver %s: delivery %d interrupted", self.receiver.name, c.id)
            self.metrics.attempts.labels(self.receiver.name, "retry").inc()
            self._requeue({c.group_id})  # what follows it waits for its retry
        finally:
            self._sending.discard(c.group_id)

    async def _send_all(self, c: Claimed) -> None:
        name = self.receiver.name
        if self.receiver.type == "none" or not self.url:
            self._finish(c, "failed", "receiver has no URL configured")
            return
        sent = c.alerts_sent
        attempts = c.attempts
        while True:
            notification = {
                "receiver": name,
                "status": c.status,
                "kind": c.kind,
                "group_id": c.group_id,
                "dedup_key": c.dedup_key,
                "group_labels": c.payload.get("group_labels", {}),
                "alerts": c.payload["alerts"][sent:],
            }
            if sent and not notification["alerts"]:
                break
            msg = self.renderer.next_message(notification, self.size_limit, first=sent == 0)
            if msg.template_failed:
                self.metrics.template_failures.labels(name).inc()
            await self.bucket.acquire()
            headers = {"Content-Type": "application/json", "Berth-Notification-Key": f"{c.dedup_key}:{sent}"}
            headers.update({k: v.get_secret_value() for k, v in self.receiver.headers.items()})
            outcome = await send(self.client, self.url, msg.body, headers, self.receiver.timeout_s)
            self.metrics.attempts.labels(name, outcome.result).inc()
            if outcome.result == "ok":
                checkpoint("alerts.delivery.after_send")
                sent += msg.alerts
                if sent >= len(c.payload["alerts"]):
                    break
                until = now() + timedelta(seconds=self.claim_s)
                if not await queue.record_progress(self.db, c.id, self.owner, sent, until):
                    return  # another replica took it over (our claim ran out)
                continue
            attempts += 1
            if outcome.result == "too_large" and self.size_limit > 1024:
                self.size_limit //= 2  # the messenger's real limit is lower than configured
                log.warning("receiver %s: 413, messages now split below %d bytes", name, self.size_limit)
                continue
            if outcome.result == "rejected" and attempts >= MAX_REJECTIONS:
                self._finish(c, "failed", outcome.detail)
                log.error("receiver %s: notification %d refused %d times: %s", name, c.id, attempts, outcome.detail)
                return
            delay = backoff(attempts, self.receiver.backoff_initial_s, self.receiver.backoff_max_s)
            if outcome.result == "throttled":
                delay = outcome.retry_after_s if outcome.retry_after_s is not None else delay
                self.bucket.hold(delay)
            await queue.retry_later(
                self.db, c.id, self.owner, attempts, now() + timedelta(seconds=delay), outcome.detail
            )
            self._requeue({c.group_id})  # it waits in the database now, its group's next ones behind it
            return
        self._finish(c, "delivered")

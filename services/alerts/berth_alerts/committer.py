"""Group commit for ingests: the requests that arrive while one transaction runs share the
next one, and each is answered only after that transaction committed.

Under a storm this turns a hundred small transactions a second into a few larger ones,
so ingest no longer queues the flusher and the deliveries behind it on the database (on
SQLite, one connection). If a shared transaction fails, each of its requests is retried
alone, so one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from berth_alerts.model import Alert
from berth_alerts.store import IngestResult, Routing, ingest_many
from berth_shared.auth import Principal
from berth_shared.db import Database

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    alerts: list[Alert]
    at: datetime
    done: asyncio.Future[IngestResult]


class GroupCommitter:
    def __init__(self, db: Database, routing: Routing, *, writers: int, max_alerts: int = 1000) -> None:
        self.db = db
        self.routing = routing
        self.max_alerts = max_alerts
        self.writers = writers
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"ingest-writer-{i}") for i in range(self.writers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for p in self._queue:  # never answered: the sender retries (nothing was stored)
            if not p.done.done():
                p.done.set_exception(ConnectionAbortedError("the alerts service is stopping"))

    async def submit(self, alerts: list[Alert], at: datetime) -> IngestResult:
        """Store these alerts; return once they are committed."""
        p = _Pending(alerts, at, asyncio.get_running_loop().create_future())
        self._queue.append(p)
        self._wake.set()
        return await p.done

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        n = 0
        while self._queue and (not batch or n + len(self._queue[0].alerts) <= self.max_alerts):
            p = self._queue.pop(0)
            batch.append(p)
            n += len(p.alerts)
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            async with self.db.transaction() as s:
                results = await ingest_many(s, self.routing, [(p.alerts, p.at) for p in batch])
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].done.done():
                    batch[0].done.set_exception(exc)
                return
            log.warning(
                "a shared ingest transaction failed (%s); committing its %d requests one by one",
                type(exc).__name__,
                len(batch),
            )
            for p in batch:
                await self._commit([p])
            return
        for p, r in zip(batch, results, strict=True):
            if not p.done.done():
                p.done.set_result(r)


class RecentBodies:
    """Digests of request bodies committed lately, to answer an identical one at once."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, tuple[float, int]] = OrderedDict()

    @staticmethod
    def key(caller: Principal, source: str, body: bytes) -> bytes:
        # A tenant's alerts get its tenant label: the same bytes from two tenants differ.
        who = "*admin*" if caller.is_admin else caller.tenant
        return hashlib.sha256(f"{who}\0{source}\0".encode() + body).digest()

    def get(self, key: bytes) -> int | None:
        hit = self._seen.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: bytes, alerts: int) -> None:
        self._seen[key] = (time.monotonic() + self.ttl_s, alerts)
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_entries or (
            self._seen and next(iter(self._seen.values()))[0] < time.monotonic()
        ):
            self._seen.popitem(last=False)

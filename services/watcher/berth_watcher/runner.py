"""The scheduler: on the leader only, each job runs every interval and whenever a run of it
is queued (HTTP, bus, events); one run of a job at a time. Runs a dead or deposed leader
left running are marked partial by the next leader; actions they left half done are
driven on by the next orphans run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from berth_shared.aio import wait_event
from berth_shared.messages.watcher import JOBS, JobName
from berth_watcher import quarantine, store
from berth_watcher.context import Context, Core
from berth_watcher.jobs import orphans, qos, reclaim, usage
from berth_watcher.leader import LeadershipLost
from berth_watcher.store import RunResult

log = logging.getLogger(__name__)
Job = Callable[[Context], Awaitable[None]]
JOB_RUNS: dict[JobName, Job] = {"qos": qos.run, "orphans": orphans.run, "reclaim": reclaim.run, "usage": usage.run}


class Scheduler:
    def __init__(self, svc: Core) -> None:
        self.svc = svc
        self._running: dict[JobName, asyncio.Task[None]] = {}
        self._epoch_seen: int | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def loop(self) -> None:
        svc = self.svc
        try:
            while True:
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("watcher scheduler tick failed")
                await wait_event(self._wake, svc.settings.tick_s)
                self._wake.clear()
        finally:
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)
            await svc.leader.release()
            svc.metrics.leader.set(0)

    async def tick(self) -> None:
        svc = self.svc
        epoch = await svc.leader.tick() if svc.bus.connected else None
        svc.metrics.leader.set(1 if epoch else 0)
        if epoch is None:
            # Not (or no longer) the leader: whatever runs here stops acting at its next check.
            for task in self._running.values():
                task.cancel()
            self._epoch_seen = None
            return
        if epoch != self._epoch_seen:
            self._epoch_seen = epoch
            stale = await store.interrupt_stale(svc.db, svc.events, epoch)
            if stale:
                log.warning("marked %d run(s) of a previous leader partial", stale)
        for job in JOBS:
            busy = self._running.get(job)
            if busy is not None and not busy.done():
                continue
            run_id = await store.next_queued(svc.db, job)
            if run_id is None and await self._due(job):
                run_id = await store.queue_run(svc.db, job, "schedule", "schedule")
            if run_id is not None:
                self._running[job] = asyncio.create_task(self.execute(job, run_id, epoch), name=f"watcher-{job}")

    async def _due(self, job: JobName) -> bool:
        last = await store.last_start(self.svc.db, job)
        return last is None or (store.now() - last).total_seconds() >= self.svc.settings.interval(job)

    async def execute(self, job: JobName, run_id: str, epoch: int) -> None:
        svc = self.svc
        if not await store.claim_run(svc.db, run_id, svc.leader.holder, epoch, svc.leader.check):
            return
        result = RunResult()
        ctx = Context(svc.settings, svc.db, svc.events, svc.leader, epoch, run_id, result, svc.sources, svc.metrics)
        start = time.monotonic()
        try:
            await JOB_RUNS[job](ctx)
        except LeadershipLost as exc:
            result.error = f"stopped: {exc}"
        except asyncio.CancelledError:
            result.error = "stopped: this replica lost the lead"
            await asyncio.shield(self._finish(job, run_id, result, start))
            raise
        except Exception as exc:
            log.exception("watcher %s run %s failed", job, run_id)
            result.error = f"{type(exc).__name__}: {exc}"[:1000]
        await self._finish(job, run_id, result, start)

    async def _finish(self, job: JobName, run_id: str, result: RunResult, start: float) -> None:
        svc = self.svc
        out = await store.finish_run(svc.db, svc.events, run_id, result)
        svc.metrics.runs.labels(job, out.status).inc()
        svc.metrics.run_seconds.labels(job).observe(time.monotonic() - start)
        for report in result.sources:
            svc.metrics.source_ok.labels(report.name).set(1 if report.ok else 0)
        svc.metrics.set_findings(await store.open_counts(svc.db))
        for cluster, n, size in await quarantine.counts(svc.db):
            svc.metrics.quarantined.labels(cluster).set(n)
            svc.metrics.quarantined_bytes.labels(cluster).set(size)
        log.info("watcher %s run %s: %s", job, run_id, out.status)

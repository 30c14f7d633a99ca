"""The operation runner: runs persisted operations as tasks of this process, each under a
lease that a background task renews while a step runs; resumes pending ones at start and,
through a sweeper, takes over those whose owner's lease ran out (it crashed).

An operation kind has three steps: `do` touches the backend and must be idempotent (after a
crash it runs again, on this replica or another); `finish` commits the outcome, and may
close the operation in its own transaction (saying so by returning True); `fail` undoes
what the operation reserved when it gives up. What is retried and for how long is the
kind's `RetryPolicy` (policy.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.clock import now
from berth_shared.db import Database
from berth_shared.errors import Aborted, BerthError, FailedPrecondition
from berth_shared.operations.policy import GiveUp, LeaseTerms, RetryPolicy, after_failure
from berth_shared.operations.store import DONE, FAILED, PENDING, OperationStore
from berth_shared.telemetry import Metrics

log = logging.getLogger(__name__)

Op = dict[str, Any]
Step = Callable[[Op], Awaitable[None]]
# A finish step may mark its operation done in its own transaction (saving one) and say so.
Finish = Callable[[Op], Awaitable[bool | None]]
Fail = Callable[[Op, str], Awaitable[None]]


@dataclass(frozen=True)
class Kind:
    do: Step
    finish: Finish
    fail: Fail | None  # None: nothing to undo (or, by its policy, it never gives up)
    retry: RetryPolicy


class OperationRunner:
    def __init__(
        self,
        db: Database,
        table: Table,
        owner: str,
        lease: timedelta,
        retry: RetryPolicy,
        *,
        kind_of: Callable[[Op], str] = lambda op: str(op["kind"]),
        metrics: Metrics | None = None,
    ) -> None:
        self.store = OperationStore(db, table)
        self.owner = owner
        self.terms = LeaseTerms(lease)
        self._retry = retry
        self._kind_of = kind_of
        self._metrics = metrics
        self._kinds: dict[str, Kind] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        # Why recent operations gave up, for a caller waiting in this process (bounded).
        self._failures: dict[str, BerthError] = {}

    def register(
        self, kind: str, do: Step, finish: Finish, fail: Fail | None = None, retry: RetryPolicy | None = None
    ) -> None:
        """Declare a kind's steps; its retries follow `retry`, else the runner's own policy."""
        self._kinds[kind] = Kind(do, finish, fail, retry or self._retry)

    def values(self, op_id: str, **columns: Any) -> Op:
        """Row values for a new operation, owned by this replica from the start."""
        return {
            "id": op_id,
            "state": PENDING,
            "attempts": 0,
            "owner": self.owner,
            "lease_until": self.terms.until(now()),
            **columns,
        }

    # -- running -----------------------------------------------------------------------

    def launch(self, op_id: str, fresh: Op | None = None) -> asyncio.Task[None]:
        """Run an operation here. `fresh` is the row this replica has just committed (with
        its own lease), which needs no claim: a transaction saved on every mutation."""
        task = self._running.get(op_id)
        if task is None or task.done():
            task = asyncio.create_task(self._run(op_id, fresh), name=f"op-{op_id}")
            self._running[op_id] = task
            task.add_done_callback(lambda _t: self._running.pop(op_id, None))
        return task

    async def _claim(self, op_id: str) -> Op | None:
        at = now()
        op = await self.store.claim(op_id, self.owner, at, self.terms.until(at))
        if op is not None:
            self._count("claims", self._kind_of(op))
        return op

    async def _run(self, op_id: str, fresh: Op | None) -> None:
        if fresh is not None:
            op: Op | None = dict(fresh, attempts=1)
            self._count("claims", self._kind_of(fresh))  # claimed by its own insert
        else:
            op = await self._claim(op_id)
        while op is not None:
            kind_name = self._kind_of(op)
            kind = self._kinds[kind_name]
            try:
                await kind.do(op)
                if not await kind.finish(op):
                    await self.store.close(op_id, DONE, None, now())
                self._count("finished", kind_name, "done")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                next_step = after_failure(kind.retry, int(op["attempts"]), exc)
                if isinstance(next_step, GiveUp):
                    await self._give_up(op, kind, exc, next_step.why)
                    return
                log.warning("operation %s (%s) will retry: %s", op_id, kind_name, exc)
                self._count("finished", kind_name, "retried")
                await asyncio.sleep(next_step.delay_s)
                op = await self._claim(op_id)  # None: finished or taken over meanwhile

    async def _give_up(self, op: Op, kind: Kind, exc: Exception, why: str) -> None:
        if isinstance(exc, BerthError):
            self._failures[op["id"]] = exc
            while len(self._failures) > 1024:
                self._failures.pop(next(iter(self._failures)))
        else:
            log.error("operation %s (%s) failed", op["id"], self._kind_of(op), exc_info=exc)
        if kind.fail is not None:
            await kind.fail(op, why)
        await self.store.close(op["id"], FAILED, why, now())
        self._count("finished", self._kind_of(op), "failed")

    async def mark_done(self, s: AsyncSession, op_id: str) -> None:
        """Mark an operation done inside the caller's transaction (with its final state)."""
        await self.store.close_in(s, op_id, DONE, None, now())

    async def mark_all_done(self, s: AsyncSession, op_ids: Collection[str]) -> None:
        """Mark several operations done in one statement inside the caller's transaction."""
        await self.store.close_all_in(s, op_ids, DONE, None, now())

    # -- callers waiting ---------------------------------------------------------------

    async def wait(self, op_id: str, timeout_s: float) -> None:
        """Wait for an operation; ABORTED if it outlives the caller's deadline."""
        task = self._running.get(op_id)
        if task is None:
            # Owned elsewhere (another replica) or already done: poll its row.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while loop.time() < deadline:
                found = await self.store.state(op_id)
                if found is None or found[0] != PENDING:
                    return
                await asyncio.sleep(0.05)
            raise Aborted("the operation is still in progress; retry the same request to follow it")
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError as exc:
            raise Aborted("the operation is still in progress; retry the same request to follow it") from exc

    async def failure(self, op_id: str) -> BerthError | None:
        """Why an operation failed (None: it did not, or is still running). The error itself
        when it failed in this process, else one rebuilt from its row."""
        exc = self._failures.pop(op_id, None)
        if exc is not None:
            return exc
        found = await self.store.state(op_id)
        if found is None or found[0] != FAILED:
            return None
        return FailedPrecondition(str(found[1] or "the operation failed"), reason="operation_failed")

    # -- background: leases and takeovers ----------------------------------------------

    async def resume_all(self) -> int:
        """Launch every pending operation this replica may take (its own, or lease expired)."""
        ids = await self.store.claimable(self.owner, now())
        for op_id in ids:
            self.launch(op_id)
        return len(ids)

    def start(self) -> None:
        """Start the lease renewer and the sweeper that takes over crashed owners' operations."""
        self._background = [
            asyncio.create_task(self._every(self.terms.renew_every_s, self._renew), name="op-lease-renewer"),
            asyncio.create_task(self._every(self.terms.sweep_every_s, self.resume_all), name="op-sweeper"),
        ]

    async def _every(self, interval_s: float, job: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception as exc:
                log.warning("operation runner %s: %s", job.__name__, exc)

    async def _renew(self) -> None:
        """Extend the leases of every operation running here, however long its step takes;
        stop the ones another replica took over (this one's lease lapsed: the DB was out
        of reach for a whole lease), so that one owner runs each operation."""
        running = list(self._running)
        if not running:
            return
        at = now()
        lost = await self.store.renew(running, self.owner, self.terms.until(at))
        for op_id in lost:
            task = self._running.get(op_id)
            if task is not None:
                log.error("operation %s: lease lost to another replica; stopping here", op_id)
                self._count("leases_lost", "")
                task.cancel()

    async def stop(self) -> None:
        tasks = [*self._running.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- metrics -----------------------------------------------------------------------

    def _count(self, what: str, kind: str, outcome: str = "") -> None:
        m = self._metrics
        if m is None:
            return
        if what == "finished":
            m.operations.labels(m.service, kind, outcome).inc()
        elif what == "claims":
            m.operation_claims.labels(m.service, kind).inc()
        else:
            m.operation_leases_lost.labels(m.service).inc()

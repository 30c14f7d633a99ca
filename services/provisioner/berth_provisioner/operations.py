"""Persisted operations: every backend-touching change is a row that a restarted or
surviving replica resumes. Steps are idempotent and completion is a conditional UPDATE,
so running an operation twice changes nothing the second time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as t
from berth_shared.backends import BackendError
from berth_shared.clock import now
from berth_shared.db import Database, affected
from berth_shared.errors import Aborted, BerthError, DeadlineExceeded, FailedPrecondition
from berth_shared.ids import new_id

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=20)
MAX_ATTEMPTS = 5

Step = Callable[[dict[str, Any]], Awaitable[None]]
# A finish step may mark its operation done in its own transaction (saving one) and say so.
Finish = Callable[[dict[str, Any]], Awaitable[bool | None]]


class OperationRunner:
    """Runs operations in this process; resumes pending ones at start and takes over
    operations whose owner's lease ran out."""

    def __init__(self, db: Database, owner: str) -> None:
        self.db = db
        self.owner = owner
        # kind -> (do, finish, fail): do touches the backend, finish/fail commit state.
        self._kinds: dict[str, tuple[Step, Finish, Callable[[dict[str, Any], str], Awaitable[None]]]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # Why recent operations gave up, for a caller waiting in this process (bounded).
        self._failures: dict[str, BerthError] = {}

    def register(
        self, kind: str, do: Step, finish: Finish, fail: Callable[[dict[str, Any], str], Awaitable[None]]
    ) -> None:
        self._kinds[kind] = (do, finish, fail)

    def values(self, kind: str, resource_id: str, tenant: str, params: dict[str, Any]) -> dict[str, Any]:
        """Row values for a new operation, owned by this replica from the start."""
        return {
            "id": new_id("op"),
            "kind": kind,
            "resource_id": resource_id,
            "tenant": tenant,
            "state": "pending",
            "params": params,
            "attempts": 0,
            "owner": self.owner,
            "lease_until": now() + LEASE,
        }

    def launch(self, op_id: str, fresh: dict[str, Any] | None = None) -> asyncio.Task[None]:
        """Run an operation here. `fresh` is the row this replica has just committed (with
        its own lease), which needs no claim: a transaction saved on every mutation."""
        task = self._running.get(op_id)
        if task is None or task.done():
            task = asyncio.create_task(self._run(op_id, fresh), name=f"op-{op_id}")
            self._running[op_id] = task
            task.add_done_callback(lambda _t: self._running.pop(op_id, None))
        return task

    async def wait(self, op_id: str, timeout_s: float) -> None:
        """Wait for an operation; ABORTED if it outlives the caller's deadline."""
        task = self._running.get(op_id)
        if task is None:
            # Owned elsewhere (another replica) or already done: poll its row.
            deadline = asyncio.get_running_loop().time() + timeout_s
            while asyncio.get_running_loop().time() < deadline:
                async with self.db.sessions() as s:
                    state = (await s.execute(select(t.operations.c.state).where(t.operations.c.id == op_id))).scalar()
                if state != "pending":
                    return
                await asyncio.sleep(0.05)
            raise Aborted("the operation is still in progress; retry the same request to follow it")
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError as exc:
            raise Aborted("the operation is still in progress; retry the same request to follow it") from exc

    async def _claim(self, op_id: str) -> dict[str, Any] | None:
        async with self.db.transaction() as s:
            res = await s.execute(
                update(t.operations)
                .where(
                    t.operations.c.id == op_id,
                    t.operations.c.state == "pending",
                    or_(
                        t.operations.c.owner == self.owner,
                        t.operations.c.lease_until.is_(None),
                        t.operations.c.lease_until < now(),
                    ),
                )
                .values(owner=self.owner, lease_until=now() + LEASE, attempts=t.operations.c.attempts + 1)
            )
            if affected(res) != 1:
                return None
            row = (await s.execute(select(t.operations).where(t.operations.c.id == op_id))).one()
            return dict(row._mapping)

    async def _run(self, op_id: str, fresh: dict[str, Any] | None = None) -> None:
        op = dict(fresh, attempts=1) if fresh is not None else await self._claim(op_id)
        if op is None:
            return
        do, finish, fail = self._kinds[op["kind"]]
        delay = 0.2
        while True:
            try:
                await do(op)
                if not await finish(op):
                    await self._set_state(op_id, "done", None)
                return
            except (BackendError, DeadlineExceeded, OSError) as exc:
                if op["attempts"] >= MAX_ATTEMPTS:
                    await self._give_up(op, fail, str(exc))
                    return
                log.warning("operation %s (%s) will retry: %s", op_id, op["kind"], exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                op = await self._claim(op_id)
                if op is None:
                    return
            except BerthError as exc:
                self._failures[op_id] = exc
                while len(self._failures) > 1024:
                    self._failures.pop(next(iter(self._failures)))
                await self._give_up(op, fail, exc.detail)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("operation %s (%s) failed", op_id, op["kind"])
                await self._give_up(op, fail, f"{type(exc).__name__}: {exc}")
                return

    async def failure(self, op_id: str) -> BerthError | None:
        """Why an operation failed (None: it did not, or is still running). The error itself
        when it failed in this process, else one rebuilt from its row."""
        exc = self._failures.pop(op_id, None)
        if exc is not None:
            return exc
        async with self.db.sessions() as s:
            row = (
                await s.execute(select(t.operations.c.state, t.operations.c.error).where(t.operations.c.id == op_id))
            ).first()
        if row is None or row.state != "failed":
            return None
        return FailedPrecondition(str(row.error or "the operation failed"), reason="operation_failed")

    async def _give_up(
        self, op: dict[str, Any], fail: Callable[[dict[str, Any], str], Awaitable[None]], why: str
    ) -> None:
        await fail(op, why)
        await self._set_state(op["id"], "failed", why)

    async def mark_done(self, s: AsyncSession, op_id: str) -> None:
        """Mark an operation done inside the caller's transaction (with its final state)."""
        await s.execute(
            update(t.operations)
            .where(t.operations.c.id == op_id)
            .values(state="done", error=None, lease_until=None, updated_at=now())
        )

    async def _set_state(self, op_id: str, state: str, error: str | None) -> None:
        async with self.db.transaction() as s:
            await s.execute(
                update(t.operations)
                .where(t.operations.c.id == op_id)
                .values(state=state, error=error, lease_until=None, updated_at=now())
            )

    async def resume_all(self) -> int:
        """Launch every pending operation this replica may take (its own, or lease expired)."""
        async with self.db.sessions() as s:
            rows = (
                await s.execute(
                    select(t.operations.c.id).where(
                        t.operations.c.state == "pending",
                        or_(
                            t.operations.c.owner == self.owner,
                            t.operations.c.lease_until.is_(None),
                            t.operations.c.lease_until < now(),
                        ),
                    )
                )
            ).scalars()
            ids = list(rows)
        for op_id in ids:
            self.launch(op_id)
        return len(ids)

    def start_sweeper(self, interval: float = 5.0) -> None:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.resume_all()
                    await self._renew_leases()
                except Exception as exc:
                    log.warning("operation sweeper: %s", exc)

        self._sweeper = asyncio.create_task(sweep(), name="op-sweeper")

    async def _renew_leases(self) -> None:
        if not self._running:
            return
        async with self.db.transaction() as s:
            await s.execute(
                update(t.operations)
                .where(t.operations.c.id.in_(list(self._running)), t.operations.c.owner == self.owner)
                .values(lease_until=now() + LEASE)
            )

    async def stop(self) -> None:
        tasks = list(self._running.values())
        if self._sweeper:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

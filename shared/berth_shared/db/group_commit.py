"""Group commit: the items submitted while one transaction runs share the next one, and
each caller is answered once that transaction has committed.

For writes that all update the same rows (a tenant's quota, a cluster's room): one at a
time, each holds those rows' locks from its UPDATE to its commit, and the next waits. A
shared transaction pays that wait, its round trips and its commit once for many. If a
shared transaction fails, each of its items is committed alone, so one item (a name
taken, a quota the batch together would pass) cannot fail the others.

No timer: the first item goes at once; only items that arrive meanwhile wait (for the
transaction in flight, which they would have queued behind on the row locks anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.db.engine import Database

T = TypeVar("T")
R = TypeVar("R")

Apply = Callable[[AsyncSession, list[T]], Awaitable[list[R]]]


class GroupCommit(Generic[T, R]):
    def __init__(self, db: Database, apply: Apply[T, R], *, max_items: int = 64, name: str = "group-commit") -> None:
        """`apply(session, items)` writes the items inside the given transaction and returns
        one result per item, in order."""
        self.db = db
        self.apply = apply
        self.max_items = max_items
        self.name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Commit this item (with whatever else is waiting); its result once committed."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=self.name)
        # A caller that stops waiting (cancelled) leaves its item to be committed all the
        # same: what it wrote must be able to finish without it, as after a crash there.
        return await done

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_items], self._queue[self.max_items :]
                await self._commit(batch)
        except BaseException as exc:
            # Cancelled (the process stopping): no caller may wait forever on an answer.
            for _, done in batch + self._queue:
                if not done.done():
                    done.set_exception(ConnectionAbortedError(f"{self.name} stopped: {exc!r}"))
            self._queue = []
            raise

    async def _commit(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            async with self.db.transaction() as s:
                results = await self.apply(s, [item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            for one in batch:
                await self._commit([one])
            return
        for (_, done), result in zip(batch, results, strict=True):
            if not done.done():
                done.set_result(result)

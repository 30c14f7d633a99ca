"""One active watcher: a NATS KV lease decides who leads, a database epoch fences the rest.

The lease alone is not enough to act safely: a leader that stalls (a long pause, a
partition from NATS) may still believe it leads while a standby already took over. So each
new leader increments `leadership.epoch`, and every action checks, inside its own
transaction, that the epoch is still the one it led with. A stale leader's action then
fails its check and changes nothing; the new leader resumes whatever was half done.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.bus import Lease
from berth_shared.db import Database, affected
from berth_watcher import tables as t

log = logging.getLogger(__name__)
NAME = "jobs"


class LeadershipLost(Exception):
    """Another watcher leads now: stop acting."""


class Leadership:
    def __init__(self, db: Database, lease: Lease) -> None:
        self.db = db
        self.lease = lease
        self.epoch: int | None = None

    @property
    def holder(self) -> str:
        return self.lease.holder

    async def tick(self) -> int | None:
        """Renew (or take) the lease; on taking it, start a new epoch. The epoch while leading."""
        if not await self.lease.tick():
            if self.epoch is not None:
                log.warning("watcher %s lost the lead (epoch %s)", self.holder, self.epoch)
            self.epoch = None
            return None
        if self.epoch is None:
            self.epoch = await self._new_epoch()
            log.info("watcher %s leads the jobs, epoch %s", self.holder, self.epoch)
        return self.epoch

    async def _new_epoch(self) -> int:
        async with self.db.transaction() as s:
            row = (await s.execute(select(t.leadership).where(t.leadership.c.name == NAME).with_for_update())).first()
            now = datetime.now(UTC)
            if row is None:
                await s.execute(t.leadership.insert().values(name=NAME, epoch=1, holder=self.holder, since=now))
                return 1
            epoch = int(row.epoch) + 1
            await s.execute(
                update(t.leadership)
                .where(t.leadership.c.name == NAME)
                .values(epoch=epoch, holder=self.holder, since=now)
            )
            return epoch

    async def check(self, s: AsyncSession, epoch: int) -> None:
        """Inside an action's transaction: raise unless `epoch` still leads. On PostgreSQL the
        row stays locked until the commit, so no new epoch starts in between."""
        res = await s.execute(
            update(t.leadership)
            .where(t.leadership.c.name == NAME, t.leadership.c.epoch == epoch)
            .values(holder=t.leadership.c.holder)
        )
        if affected(res) != 1:
            raise LeadershipLost(f"epoch {epoch} no longer leads")

    async def release(self) -> None:
        await self.lease.release()
        self.epoch = None

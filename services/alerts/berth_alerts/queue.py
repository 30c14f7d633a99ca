"""The persisted delivery queue: claim, collapse a backlog, record outcomes.

A delivery is claimed by one replica at a time (`sending`, with a claim that runs out,
so another replica or the restarted one takes over a dead replica's work). One group's
notifications go out in order, one at a time; when several are waiting (a messenger
outage, a restart), they are collapsed into one that tells each alert's latest state.
Notifications older than the receiver's max age are expired, never sent, and counted.

The flusher claims a new notification itself, in the transaction that queues it, when its
group has nothing else open (`open_groups`) and the receiver would take it at once, and
hands it to the receiver's worker in memory. The claim below is for what waits: retries,
a backlog, a notification queued behind its group's previous one, another replica's work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_alerts import tables as t
from berth_alerts.grouping import collapse, payload_status
from berth_shared.db import Database, affected

d_ = t.deliveries.c
FINISHED = ("delivered", "failed", "expired", "collapsed")
PRUNE_BATCH = 5000  # rows per transaction: a large history never holds the database long


@dataclass
class Claimed:
    id: int
    group_id: str
    dedup_key: str
    status: str
    kind: str
    payload: dict[str, Any]
    alerts_sent: int
    attempts: int
    oldest_change_at: datetime
    created_at: datetime


@dataclass
class ClaimResult:
    claimed: list[Claimed]
    expired: int
    collapsed: int
    finished: set[int] = field(default_factory=set)  # of the outcomes given, those recorded
    more: bool = False  # open notifications remain (busy or not yet due): claim again soon


async def claim(
    db: Database,
    receiver: str,
    owner: str,
    now: datetime,
    *,
    limit: int,
    claim_s: float,
    max_age_s: float,
    finished: list[Outcome] | None = None,
) -> ClaimResult:
    """Claim the next notifications; first record `finished` ones (as finish_many), in the
    same transaction: their groups' next notifications can then be claimed at once,
    without a transaction (and, on SQLite, a turn on the connection) of their own."""
    async with db.transaction() as s:
        recorded = await record_finished(s, owner, finished, now) if finished else set()
        expired = affected(
            await s.execute(
                update(t.deliveries)
                .where(
                    d_.receiver == receiver,
                    d_.state.in_(("pending", "sending")),
                    d_.created_at < now - timedelta(seconds=max_age_s),
                    or_(d_.state == "pending", d_.claim_until < now),
                )
                .values(state="expired", finished_at=now, last_error="older than the receiver's max_age")
            )
        )
        # `state IN` first: the queue index then finds the open rows, where the OR alone made
        # every claim read all of the receiver's history (delivered rows are kept).
        open_ = and_(
            d_.state.in_(("pending", "sending")),
            or_(d_.state == "pending", d_.claim_until < now),
        )
        busy = set(
            (
                await s.execute(
                    select(d_.group_id).where(d_.receiver == receiver, d_.state == "sending", d_.claim_until >= now)
                )
            ).scalars()
        )
        # The groups whose oldest open notification is due, oldest first (no payloads read yet).
        heads = (
            await s.execute(
                select(d_.group_id, func.min(d_.next_attempt_at).label("due"), func.min(d_.id).label("first"))
                .where(d_.receiver == receiver, open_)
                .group_by(d_.group_id)
                .order_by(func.min(d_.id))
                .limit(limit + len(busy))
            )
        ).all()
        groups = [h.group_id for h in heads if h.group_id not in busy and h.due <= now][:limit]
        chosen: list[Claimed] = []
        collapsed = 0
        if not groups:
            return ClaimResult(chosen, expired, collapsed, recorded, more=bool(heads))
        # All of these groups' backlogs, locked, in one statement: each becomes one
        # notification of the latest state.
        backlog: dict[str, list[Any]] = {}
        for r in (
            await s.execute(
                select(t.deliveries)
                .where(d_.receiver == receiver, d_.group_id.in_(groups), open_)
                .order_by(d_.id)
                .with_for_update(skip_locked=True)
            )
        ).all():
            backlog.setdefault(r.group_id, []).append(r)
        claims: list[dict[str, Any]] = []
        until = now + timedelta(seconds=claim_s)
        for gid in groups:
            group_rows = backlog.get(gid)
            if not group_rows:
                continue  # another replica took it meanwhile
            first, last = group_rows[0], group_rows[-1]
            if len(group_rows) == 1:  # the common case: only its claim changes, not its payload
                claims.append({"c_id": last.id, "c_owner": owner, "c_until": until})
                chosen.append(
                    Claimed(
                        last.id,
                        gid,
                        last.dedup_key,
                        payload_status(last.payload),
                        last.payload.get("kind", last.kind),
                        last.payload,
                        last.alerts_sent,
                        last.attempts,
                        last.oldest_change_at,
                        last.created_at,
                    )
                )
                continue
            # Parts of older ones already delivered are told again in the merged one.
            pl = collapse([r.payload for r in group_rows])
            older = [r.id for r in group_rows[:-1]]
            collapsed += len(older)
            await s.execute(
                update(t.deliveries)
                .where(d_.id.in_(older))
                .values(state="collapsed", collapsed_into=last.id, finished_at=now)
            )
            oldest = min(r.oldest_change_at for r in group_rows)
            await s.execute(
                update(t.deliveries)
                .where(d_.id == last.id)
                .values(
                    state="sending",
                    claimed_by=owner,
                    claim_until=until,
                    payload=pl,
                    status=payload_status(pl),
                    alerts_sent=0,
                    attempts=first.attempts,
                    alert_count=len(pl["alerts"]),
                    oldest_change_at=oldest,
                )
            )
            chosen.append(
                Claimed(
                    last.id,
                    gid,
                    last.dedup_key,
                    payload_status(pl),
                    pl.get("kind", last.kind),
                    pl,
                    0,
                    first.attempts,
                    oldest,
                    first.created_at,
                )
            )
        if claims:
            await s.execute(_CLAIM, claims)
        return ClaimResult(chosen, expired, collapsed, recorded, more=True)


async def record_progress(db: Database, delivery_id: int, owner: str, alerts_sent: int, claim_until: datetime) -> bool:
    """Part delivered: remember how far, and extend the claim. False if the claim was lost."""
    async with db.transaction() as s:
        res = await s.execute(
            update(t.deliveries)
            .where(d_.id == delivery_id, d_.claimed_by == owner, d_.state == "sending")
            .values(alerts_sent=alerts_sent, claim_until=claim_until)
        )
        return affected(res) == 1


@dataclass
class Outcome:
    id: int
    state: str  # delivered | failed
    error: str | None = None


async def finish_many(db: Database, owner: str, outcomes: list[Outcome], now: datetime) -> set[int]:
    """Record finished deliveries in one transaction; the ids whose claim was still ours."""
    async with db.transaction() as s:
        return await record_finished(s, owner, outcomes, now)


async def record_finished(s: AsyncSession, owner: str, outcomes: list[Outcome], now: datetime) -> set[int]:
    """Record finished deliveries in the caller's transaction; the ids still ours."""
    mine = set(
        (
            await s.execute(
                select(d_.id).where(d_.id.in_([o.id for o in outcomes]), d_.claimed_by == owner, d_.state == "sending")
            )
        ).scalars()
    )
    rows = [{"d_id": o.id, "d_state": o.state, "d_error": o.error, "d_at": now} for o in outcomes if o.id in mine]
    if rows:
        await s.execute(_FINISH, rows)
    return mine


_CLAIM = (
    update(t.deliveries)
    .where(d_.id == bindparam("c_id"))
    .values(state="sending", claimed_by=bindparam("c_owner"), claim_until=bindparam("c_until"))
)
_FINISH = (
    update(t.deliveries)
    .where(d_.id == bindparam("d_id"))
    .values(
        state=bindparam("d_state"), last_error=bindparam("d_error"), finished_at=bindparam("d_at"), claim_until=None
    )
)


async def retry_later(db: Database, delivery_id: int, owner: str, attempts: int, next_at: datetime, error: str) -> bool:
    async with db.transaction() as s:
        res = await s.execute(
            update(t.deliveries)
            .where(d_.id == delivery_id, d_.claimed_by == owner, d_.state == "sending")
            .values(
                state="pending", attempts=attempts, next_attempt_at=next_at, last_error=error[:2000], claim_until=None
            )
        )
        return affected(res) == 1


async def open_groups(s: AsyncSession, receiver: str, owner: str, group_ids: list[str]) -> set[str]:
    """Of these groups, those with a notification queued for the receiver, or being sent
    by another replica. (What this one sends, its worker orders in memory.)"""
    found = await s.execute(
        select(d_.group_id)
        .where(
            d_.receiver == receiver,
            d_.group_id.in_(group_ids),
            or_(d_.state == "pending", and_(d_.state == "sending", d_.claimed_by != owner)),
        )
        .distinct()
    )
    return set(found.scalars())


async def release_own(db: Database, owner: str, ids: list[int] | None = None) -> int:
    """What this replica claimed and did not send goes back to the queue, for anyone to
    send at once: at start (all of it: it died), or at a stop (the claims not yet sent)."""
    where = [d_.state == "sending", d_.claimed_by == owner]
    if ids is not None:
        where.append(d_.id.in_(ids))
    async with db.transaction() as s:
        res = await s.execute(update(t.deliveries).where(*where).values(state="pending", claim_until=None))
        return affected(res)


async def prune_finished(db: Database, before: datetime) -> int:
    """Delete the notifications that finished before `before`; how many. A notification
    still queued or being sent is never touched, whatever its age."""
    pruned = 0
    while True:
        async with db.transaction() as s:
            oldest = (
                select(d_.id)
                .where(d_.finished_at < before, d_.state.in_(FINISHED))
                .order_by(d_.finished_at)
                .limit(PRUNE_BATCH)
            )
            res = await s.execute(delete(t.deliveries).where(d_.id.in_(oldest.scalar_subquery())))
        n = affected(res)
        pruned += n
        if n < PRUNE_BATCH:
            return pruned

"""Quarantine, restore and purge of backend objects, each a persisted state machine.

    quarantining --backend.quarantine--> quarantined --(purge_after)--> purging --> purged
                                              \\--restore--> restoring --> restored

Each step is a conditional update (from the state it expects) in a transaction that
checks the leader's epoch (restores need no leader: any replica may run one, and the
conditional update keeps a concurrent purge out). The backend calls are idempotent, so a
row left in a transitional state by a crash is simply driven on by the next leader: an
action resumed, never run twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.backends import Backend
from berth_shared.db import Database, EventWriter, affected
from berth_shared.errors import FailedPrecondition, NotFound
from berth_shared.faults import checkpoint
from berth_shared.messages.watcher import QuarantineEntry, QuarantineQuery
from berth_watcher import tables as t
from berth_watcher.store import event_tenant, new_id, now, resolve, set_finding_state

log = logging.getLogger(__name__)
TRANSITIONAL = ("quarantining", "restoring", "purging")


def entry_out(row: Row[Any]) -> QuarantineEntry:
    m = dict(row._mapping)
    for k in ("open_key", "epoch", "finding_kind"):
        m.pop(k, None)
    state = m["state"]
    # A transitional state reads as where it is heading from.
    shown = {"quarantining": "quarantined", "restoring": "quarantined", "purging": "quarantined"}.get(state, state)
    severity = "warning" if shown in ("quarantined", "failed") else "info"
    return QuarantineEntry.model_validate(m | {"state": shown, "severity": severity})


async def get_row(db: Database, qid: str) -> Row[Any]:
    async with db.sessions() as s:
        row = (await s.execute(select(t.quarantine).where(t.quarantine.c.id == qid))).first()
    if row is None:
        raise NotFound(f"quarantine entry {qid} not found", reason="quarantine_not_found")
    return row


async def list_entries(db: Database, q: QuarantineQuery) -> tuple[list[QuarantineEntry], str | None]:
    c = t.quarantine.c
    query = select(t.quarantine).order_by(c.id).limit(q.limit + 1)
    if q.state == "quarantined":
        query = query.where(c.state.in_(("quarantined", *TRANSITIONAL)))
    elif q.state:
        query = query.where(c.state == q.state)
    if q.tenant:
        query = query.where(c.tenant == q.tenant)
    if q.starting_token:
        query = query.where(c.id > q.starting_token)
    async with db.sessions() as s:
        rows = (await s.execute(query)).all()
    items = [entry_out(r) for r in rows[: q.limit]]
    return items, items[-1].id if len(rows) > q.limit else None


async def start(
    s: AsyncSession,
    finding: Row[Any],
    backend_kind: str,
    size_bytes: int,
    epoch: int,
    requested_by: str,
    quarantine_s: float,
) -> str:
    """Record the intent (in the caller's epoch-checked transaction): the row comes first,
    so a crash after the backend call still finds what was moved."""
    qid = new_id("qtn")
    object_kind = finding.resource_kind
    at = now()
    await s.execute(
        t.quarantine.insert().values(
            id=qid,
            finding_id=finding.id,
            finding_kind=finding.kind,
            cluster_id=finding.cluster_id,
            backend=backend_kind,
            object_kind=object_kind,
            object_id=finding.resource_id,
            open_key=f"{finding.cluster_id}:{object_kind}:{finding.resource_id}",
            tenant=finding.tenant,
            size_bytes=size_bytes,
            state="quarantining",
            reason=finding.summary,
            requested_by=requested_by,
            epoch=epoch,
            quarantined_at=at,
            purge_after=at + timedelta(seconds=quarantine_s),
        )
    )
    await set_finding_state(s, finding.id, "acting")
    return qid


async def finish_quarantine(db: Database, events: EventWriter, row: Row[Any], backend: Backend) -> None:
    """Drive a `quarantining` row: move the object, then record it (and say so)."""
    try:
        await backend.quarantine(row.object_kind, row.object_id)
    except (FailedPrecondition, NotFound) as exc:
        await _fail(db, row, f"not quarantined: {exc.detail}")
        raise
    checkpoint("watcher.quarantine.after_backend")
    async with db.transaction() as s:
        res = await s.execute(
            update(t.quarantine)
            .where(t.quarantine.c.id == row.id, t.quarantine.c.state == "quarantining")
            .values(state="quarantined", quarantined_at=now())
        )
        if affected(res) == 1:
            if row.finding_id:
                await set_finding_state(s, row.finding_id, "quarantined")
            await _emit(s, events, row.id, "created")
    events.notify()


async def _fail(db: Database, row: Row[Any], why: str) -> None:
    async with db.transaction() as s:
        await s.execute(
            update(t.quarantine)
            .where(t.quarantine.c.id == row.id, t.quarantine.c.state == row.state)
            .values(state="failed", error=why[:2000], open_key=None)
        )
        if row.finding_id:
            await set_finding_state(s, row.finding_id, "open")


async def _emit(s: AsyncSession, events: EventWriter, qid: str, verb: str) -> None:
    row = (await s.execute(select(t.quarantine).where(t.quarantine.c.id == qid))).one()
    await events.emit(s, event_tenant(row.tenant), "quarantine", verb, qid, entry_out(row).model_dump(mode="json"))


async def begin_restore(db: Database, qid: str) -> Row[Any]:
    """quarantined -> restoring (refused while it is being purged or already gone)."""
    async with db.transaction() as s:
        res = await s.execute(
            update(t.quarantine)
            .where(t.quarantine.c.id == qid, t.quarantine.c.state.in_(("quarantined", "restoring")))
            .values(state="restoring")
        )
        row = (await s.execute(select(t.quarantine).where(t.quarantine.c.id == qid))).first()
    if row is None:
        raise NotFound(f"quarantine entry {qid} not found", reason="quarantine_not_found")
    if affected(res) != 1:
        raise FailedPrecondition(f"quarantine entry {qid} is {row.state}; only a quarantined object is restored")
    return row


async def finish_restore(db: Database, events: EventWriter, row: Row[Any], backend: Backend, by: str) -> None:
    await backend.restore(row.object_kind, row.object_id)
    async with db.transaction() as s:
        res = await s.execute(
            update(t.quarantine)
            .where(t.quarantine.c.id == row.id, t.quarantine.c.state == "restoring")
            .values(state="restored", restored_at=now(), open_key=None)
        )
        if affected(res) == 1:
            if row.finding_id:
                # Restored by a person: the object is wanted. Ignored, so no policy takes it again.
                await set_finding_state(s, row.finding_id, "ignored", resolution=f"restored by {by}")
            await _emit(s, events, row.id, "restored")
    events.notify()


async def begin_purge(db: Database, row: Row[Any], epoch: int, check: Any) -> bool:
    async with db.transaction() as s:
        await check(s, epoch)
        res = await s.execute(
            update(t.quarantine)
            .where(t.quarantine.c.id == row.id, t.quarantine.c.state.in_(("quarantined", "purging")))
            .values(state="purging", epoch=epoch)
        )
        return affected(res) == 1


async def finish_purge(db: Database, events: EventWriter, row: Row[Any], backend: Backend) -> None:
    await backend.purge(row.object_kind, row.object_id)
    async with db.transaction() as s:
        res = await s.execute(
            update(t.quarantine)
            .where(t.quarantine.c.id == row.id, t.quarantine.c.state == "purging")
            .values(state="purged", purged_at=now(), open_key=None)
        )
        if affected(res) == 1:
            if row.finding_id:
                await resolve(s, events, row.finding_id, "purged after its quarantine")
            await _emit(s, events, row.id, "purged")
    events.notify()


async def due(db: Database, at: datetime) -> list[Row[Any]]:
    async with db.sessions() as s:
        q = select(t.quarantine).where(t.quarantine.c.state == "quarantined", t.quarantine.c.purge_after <= at)
        return list((await s.execute(q.order_by(t.quarantine.c.purge_after))).all())


async def transitional(db: Database) -> list[Row[Any]]:
    async with db.sessions() as s:
        q = select(t.quarantine).where(t.quarantine.c.state.in_(TRANSITIONAL))
        return list((await s.execute(q)).all())


async def purge_now(db: Database, qid: str) -> Row[Any]:
    """Bring a quarantined object's purge forward; the leader purges it (with its checks)."""
    async with db.transaction() as s:
        res = await s.execute(
            update(t.quarantine)
            .where(t.quarantine.c.id == qid, t.quarantine.c.state == "quarantined")
            .values(purge_after=now())
        )
        row = (await s.execute(select(t.quarantine).where(t.quarantine.c.id == qid))).first()
    if row is None:
        raise NotFound(f"quarantine entry {qid} not found", reason="quarantine_not_found")
    if affected(res) != 1 and row.state not in ("purging", "purged"):
        raise FailedPrecondition(f"quarantine entry {qid} is {row.state}; only a quarantined object is purged")
    return row


async def counts(db: Database) -> list[tuple[str, int, int]]:
    """(cluster, objects, bytes) in quarantine: the gauges."""
    async with db.sessions() as s:
        q = (
            select(t.quarantine.c.cluster_id, func.count(), func.coalesce(func.sum(t.quarantine.c.size_bytes), 0))
            .where(t.quarantine.c.state.in_(("quarantined", *TRANSITIONAL)))
            .group_by(t.quarantine.c.cluster_id)
        )
        return [(str(c), int(n), int(b)) for c, n, b in (await s.execute(q)).all()]

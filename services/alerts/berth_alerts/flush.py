"""The flusher: groups whose timer is due become notifications in the delivery queue.

One transaction per batch of groups: read the groups (locked on PostgreSQL, in id order,
as ingest locks them, so neither deadlocks the other) and their changed members, plan each, insert the deliveries
(`ON CONFLICT (dedup_key) DO NOTHING`: a notification is queued once whoever computes
it), settle the members, set the groups' next timers: a few statements per batch, not per
group. A crash anywhere rolls the whole batch back: nothing is half done.

A notification whose group has nothing else open goes out claimed by this replica, up to
what each receiver's token bucket lets through at once (`Handover`), and is handed to its
worker once committed: the common case costs no claim transaction (on SQLite, no wait
behind ingest for the one connection). The rest is queued pending, for the worker's claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from berth_alerts import tables as t
from berth_alerts.grouping import Member, Muter, SilenceView, dedup_key, payload, plan
from berth_alerts.model import Matcher
from berth_alerts.queue import Claimed, open_groups
from berth_alerts.store import Routing, insert_for


async def load_muter(session: AsyncSession, routing: Routing, now: datetime) -> Muter:
    s_ = t.silences.c
    rows = await session.execute(select(s_.id, s_.matchers, s_.tenant).where(s_.starts_at <= now, s_.ends_at > now))
    silences = [
        SilenceView(r.id, tuple(Matcher(m["name"], m["op"], m["value"]) for m in r.matchers), r.tenant) for r in rows
    ]
    inhibitors: dict[str, set[str]] = {}
    if routing.rules:
        a_ = t.alerts.c
        src = await session.execute(
            select(a_.fingerprint, a_.inhibits).where(a_.inhibit_source.is_(True), a_.status == "firing")
        )
        for r in src:
            for key in r.inhibits or ():
                inhibitors.setdefault(key, set()).add(r.fingerprint)
    return Muter(silences, routing.rules, inhibitors)


FLUSH_BATCH = 200  # groups per transaction


@dataclass
class Handover:
    """Who claims what the flush queues: this replica, for `claim_s`, up to `slots` per
    receiver (what its worker can send at once)."""

    owner: str
    claim_s: float
    slots: dict[str, int]


@dataclass
class Flushed:
    groups: int = 0
    queued: int = 0
    handed: dict[str, list[Claimed]] = field(default_factory=dict)  # receiver -> claimed for it
    pending: set[str] = field(default_factory=set)  # receivers left notifications to claim


async def flush_due(
    session: AsyncSession,
    routing: Routing,
    now: datetime,
    handover: Handover | None = None,
    limit: int = FLUSH_BATCH,
) -> Flushed:
    """Flush up to `limit` due groups: what was flushed, queued and handed over."""
    g_ = t.alert_groups.c
    due = (
        await session.execute(
            select(t.alert_groups)
            .where(or_(g_.due_at <= now, g_.repeat_at <= now))
            .order_by(g_.id)
            .limit(limit)
            # Waits for an ingest holding a group (a moment) rather than skipping it: skipped,
            # a busy group would be put off flush after flush under a steady stream.
            .with_for_update()
        )
    ).all()
    if not due:
        return Flushed()
    muter = await load_muter(session, routing, now)
    repeating = {g.id for g in due if g.repeat_at is not None and g.repeat_at <= now}
    members = await _members(session, [g.id for g in due], repeating)
    deliveries: list[dict[str, Any]] = []
    settle: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for g in due:
        delivery, group = _flush_group(routing, g, members.get(g.id, []), muter, now, settle)
        if delivery:
            deliveries.append(delivery)
        updates.append(group)
    out = Flushed(groups=len(due), queued=len(deliveries))
    if deliveries:
        claimed = await _claim_new(session, deliveries, handover, now)
        ins = insert_for(session, t.deliveries).on_conflict_do_nothing(index_elements=["dedup_key"])
        rows = await session.execute(ins.returning(t.deliveries.c.dedup_key, t.deliveries.c.id), deliveries)
        inserted: dict[str, int] = {key: delivery_id for key, delivery_id in rows}
        for d in deliveries:
            if d["dedup_key"] not in inserted:
                continue  # queued already, by whoever computed it first
            if d["dedup_key"] in claimed:
                out.handed.setdefault(d["receiver"], []).append(_claimed(inserted[d["dedup_key"]], d))
            else:
                out.pending.add(d["receiver"])
    if settle:
        await session.execute(_SETTLE, settle)
    await session.execute(_GROUP, updates)
    return out


async def _claim_new(
    session: AsyncSession, deliveries: list[dict[str, Any]], handover: Handover | None, now: datetime
) -> set[str]:
    """Mark the deliveries this replica sends itself (state `sending`, claimed); their keys.
    One per group, and none for a group with another notification open: its order holds."""
    if handover is None:
        return set()
    claimed: set[str] = set()
    until = now + timedelta(seconds=handover.claim_s)
    for receiver in sorted({d["receiver"] for d in deliveries}):
        slots = handover.slots.get(receiver, 0)
        if slots <= 0:
            continue
        mine = [d for d in deliveries if d["receiver"] == receiver]
        busy = await open_groups(session, receiver, handover.owner, sorted({d["group_id"] for d in mine}))
        for d in mine:
            if slots <= 0:
                break
            if d["group_id"] in busy:
                continue
            busy.add(d["group_id"])
            d.update(state="sending", claimed_by=handover.owner, claim_until=until)
            claimed.add(d["dedup_key"])
            slots -= 1
    return claimed


def _claimed(delivery_id: int, d: dict[str, Any]) -> Claimed:
    pl = d["payload"]
    return Claimed(
        delivery_id,
        d["group_id"],
        d["dedup_key"],
        d["status"],
        pl.get("kind", d["kind"]),
        pl,
        0,
        0,
        d["oldest_change_at"],
        d["created_at"],
    )


_COLUMNS = (
    "fingerprint",
    "labels",
    "annotations",
    "status",
    "starts_at",
    "ends_at",
    "generator_url",
    "oneshot",
    "changed_at",
)


async def _members(session: AsyncSession, group_ids: list[str], repeating: set[str]) -> dict[str, list[Member]]:
    m_, a_ = t.group_members.c, t.alerts.c
    cond: ColumnElement[bool] = m_.pending.is_(True)
    if repeating:
        cond = or_(cond, and_(m_.group_id.in_(sorted(repeating)), a_.status == "firing"))
    rows = await session.execute(
        select(m_.group_id, *(a_[c] for c in _COLUMNS), m_.pending, m_.notified)
        .join(t.alerts, a_.fingerprint == m_.fingerprint)
        .where(m_.group_id.in_(group_ids), cond)
    )
    out: dict[str, list[Member]] = {}
    # Unpacked, not read by name: thousands of rows a second in a storm.
    for gid, fp, labels, notes, status, starts_at, ends_at, url, oneshot, changed_at, pending, notified in rows:
        out.setdefault(gid, []).append(
            Member(
                fp,
                labels,
                notes,
                status,
                starts_at,
                ends_at,
                url,
                bool(oneshot),
                changed_at,
                bool(pending),
                notified,
            )
        )
    return out


def _flush_group(
    routing: Routing, g: Any, members: list[Member], muter: Muter, now: datetime, settle: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Plan one group: its delivery row (or None), and its new timers; settled members go to `settle`."""
    timing = routing.timing(g.route_id)
    repeat = g.repeat_at is not None and g.repeat_at <= now
    receiver = routing.receivers.get(g.receiver)
    p = plan(members, muted=muter, send_resolved=receiver.send_resolved if receiver else True, repeat=repeat)
    group = {
        "g_id": g.id,
        "g_due": now + timedelta(seconds=timing.group_interval_s) if p.still_pending else None,
        "g_repeat": None if repeat and not p.include else g.repeat_at,
        "g_last": g.last_notified_at,
        "g_hold": g.hold_until,
        "g_n": g.notifications,
    }
    settle.extend({"g": g.id, "fp": fp, "tag": tag} for fp, tag in sorted(p.settle.items()))
    if not p.kind:
        return None, group
    delivery = {
        "dedup_key": dedup_key(g.id, g.receiver, p, g.notifications),
        "group_id": g.id,
        "receiver": g.receiver,
        "state": "pending",
        "status": p.status,
        "kind": p.kind,
        "payload": payload(p, g.group_labels, g.route_id),
        "alert_count": len(p.include),
        "alerts_sent": 0,
        "attempts": 0,
        "next_attempt_at": now,
        "claimed_by": None,
        "claim_until": None,
        "oldest_change_at": min(m.changed_at for m in p.include),
        "created_at": now,
    }
    group.update(g_last=now, g_hold=now + timedelta(seconds=timing.group_interval_s), g_n=g.notifications + 1)
    fires = any(m.status == "firing" and not m.oneshot for m in p.include)
    if timing.repeat_interval_s > 0 and (p.kind == "repeat" or fires):
        group["g_repeat"] = now + timedelta(seconds=timing.repeat_interval_s)
    return delivery, group


_m = t.group_members.c
_SETTLE = (
    update(t.group_members)
    .where(_m.group_id == bindparam("g"), _m.fingerprint == bindparam("fp"))
    .values(pending=False, notified=bindparam("tag"))
)
_g = t.alert_groups.c
_GROUP = (
    update(t.alert_groups)
    .where(_g.id == bindparam("g_id"))
    .values(
        due_at=bindparam("g_due"),
        repeat_at=bindparam("g_repeat"),
        last_notified_at=bindparam("g_last"),
        hold_until=bindparam("g_hold"),
        notifications=bindparam("g_n"),
    )
)

"""The flusher: groups whose timer is due become notifications in the delivery queue.

One transaction per batch of groups: read the groups (locked on PostgreSQL, in id order,
as ingest locks them, so neither deadlocks the other) and their changed members, plan each, insert the deliveries
(`ON CONFLICT (dedup_key) DO NOTHING`: a notification is queued once whoever computes
it), settle the members, set the groups' next timers: a few statements per batch, not per
group. A crash anywhere rolls the whole batch back: nothing is half done.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from berth_alerts import tables as t
from berth_alerts.grouping import Member, Muter, SilenceView, dedup_key, payload, plan
from berth_alerts.model import Matcher
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


async def flush_due(
    session: AsyncSession, routing: Routing, now: datetime, limit: int = FLUSH_BATCH
) -> tuple[int, int]:
    """Flush up to `limit` due groups; return how many, and how many notifications were queued."""
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
        return 0, 0
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
    if deliveries:
        ins = insert_for(session, t.deliveries)
        await session.execute(ins.on_conflict_do_nothing(index_elements=["dedup_key"]), deliveries)
    if settle:
        await session.execute(_SETTLE, settle)
    await session.execute(_GROUP, updates)
    return len(due), len(deliveries)


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

"""The flusher: groups whose timer is due become notifications in the delivery queue.

One transaction per batch of groups: read the group (locked on PostgreSQL, `SKIP LOCKED`
so replicas split the work), plan, insert the delivery (`ON CONFLICT (dedup_key) DO
NOTHING`: a notification is queued once whoever computes it), settle the members, set
the group's next timers. A crash anywhere rolls the whole batch back: nothing is half done.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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


async def flush_due(session: AsyncSession, routing: Routing, now: datetime, limit: int = 100) -> tuple[int, list[int]]:
    """Flush up to `limit` due groups; return how many, and the new deliveries' ids."""
    g_ = t.alert_groups.c
    due = (
        await session.execute(
            select(t.alert_groups)
            .where(or_(g_.due_at <= now, g_.repeat_at <= now))
            .order_by(g_.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not due:
        return 0, []
    muter = await load_muter(session, routing, now)
    made: list[int] = []
    for g in due:
        delivery = await _flush_group(session, routing, g, muter, now)
        if delivery is not None:
            made.append(delivery)
    return len(due), made


async def _members(session: AsyncSession, group_id: str, with_firing: bool) -> list[Member]:
    m_, a_ = t.group_members.c, t.alerts.c
    cond = or_(m_.pending.is_(True), a_.status == "firing") if with_firing else m_.pending.is_(True)
    rows = await session.execute(
        select(
            a_.fingerprint,
            a_.labels,
            a_.annotations,
            a_.status,
            a_.starts_at,
            a_.ends_at,
            a_.generator_url,
            a_.oneshot,
            a_.changed_at,
            m_.pending,
            m_.notified,
        )
        .join(t.alerts, a_.fingerprint == m_.fingerprint)
        .where(m_.group_id == group_id, cond)
    )
    return [
        Member(
            r.fingerprint,
            r.labels,
            r.annotations,
            r.status,
            r.starts_at,
            r.ends_at,
            r.generator_url,
            bool(r.oneshot),
            r.changed_at,
            bool(r.pending),
            r.notified,
        )
        for r in rows
    ]


async def _flush_group(session: AsyncSession, routing: Routing, g: Any, muter: Muter, now: datetime) -> int | None:
    timing = routing.timing(g.route_id)
    repeat = g.repeat_at is not None and g.repeat_at <= now
    receiver = routing.config.receiver(g.receiver) if g.receiver in _names(routing) else None
    send_resolved = receiver.send_resolved if receiver else True
    members = await _members(session, g.id, with_firing=repeat)
    p = plan(members, muted=muter, send_resolved=send_resolved, repeat=repeat)

    delivery_id: int | None = None
    values: dict[str, Any] = {"due_at": now + timedelta(seconds=timing.group_interval_s) if p.still_pending else None}
    if repeat and p.kind != "repeat" and not p.include:
        values["repeat_at"] = None  # nothing firing is left to repeat
    if p.kind:
        key = dedup_key(g.id, g.receiver, p, g.notifications)
        pl = payload(p, g.group_labels, g.route_id)
        ins = insert_for(session, t.deliveries).values(
            dedup_key=key,
            group_id=g.id,
            receiver=g.receiver,
            state="pending",
            status=p.status,
            kind=p.kind,
            payload=pl,
            alert_count=len(p.include),
            alerts_sent=0,
            attempts=0,
            next_attempt_at=now,
            oldest_change_at=min(m.changed_at for m in p.include),
            created_at=now,
        )
        res = await session.execute(
            ins.on_conflict_do_nothing(index_elements=["dedup_key"]).returning(t.deliveries.c.id)
        )
        delivery_id = res.scalar_one_or_none()
        values.update(
            last_notified_at=now,
            hold_until=now + timedelta(seconds=timing.group_interval_s),
            notifications=g.notifications + 1,
        )
        fires = any(m.status == "firing" and not m.oneshot for m in p.include)
        if timing.repeat_interval_s > 0 and (p.kind == "repeat" or fires):
            values["repeat_at"] = now + timedelta(seconds=timing.repeat_interval_s)
    if p.settle:
        await session.execute(_SETTLE, [{"g": g.id, "fp": fp, "tag": tag} for fp, tag in sorted(p.settle.items())])
    await session.execute(update(t.alert_groups).where(t.alert_groups.c.id == g.id).values(**values))
    return delivery_id


_m = t.group_members.c
_SETTLE = (
    update(t.group_members)
    .where(_m.group_id == bindparam("g"), _m.fingerprint == bindparam("fp"))
    .values(pending=False, notified=bindparam("tag"))
)


def _names(routing: Routing) -> set[str]:
    return {r.name for r in routing.config.receivers}

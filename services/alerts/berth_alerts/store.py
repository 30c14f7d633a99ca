"""Ingest into the database: alerts upserted by fingerprint, their groups marked due.

Everything an ingest does is one transaction, committed before the sender is answered
(durable before ack). Duplicates (an HA pair's second copy, a retry) change nothing.
Lock order, to stay free of deadlocks on PostgreSQL: alerts, then groups (sorted by id),
then group members; the flusher takes a group, then its members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from berth_alerts import tables as t
from berth_alerts.config import AlertsConfig, ReceiverConfig, Timing
from berth_alerts.grouping import inhibit_keys
from berth_alerts.model import Alert, Matcher
from berth_alerts.routing import Route, build_tree, place, routes_by_id

CHUNK = 500
Rule = tuple[tuple[Matcher, ...], tuple[Matcher, ...], list[str]]


@dataclass
class Routing:
    """The configuration, compiled: the tree, its routes by id, the inhibition rules."""

    config: AlertsConfig
    tree: Route = field(init=False)
    routes: dict[str, Route] = field(init=False)
    receivers: dict[str, ReceiverConfig] = field(init=False)
    rules: list[Rule] = field(init=False)

    def __post_init__(self) -> None:
        self.tree = build_tree(self.config)
        self.routes = routes_by_id(self.tree)
        self.receivers = {r.name: r for r in self.config.receivers}
        self.rules = [
            (tuple(r.source_matchers), tuple(r.target_matchers), list(r.equal)) for r in self.config.inhibit_rules
        ]

    def timing(self, route_id: str) -> Timing:
        route = self.routes.get(route_id, self.tree)  # a route gone from the file: the root's timings
        return route.timing


@dataclass
class IngestResult:
    new: int = 0
    changed: int = 0
    duplicate: int = 0

    @property
    def accepted(self) -> int:
        return self.new + self.changed + self.duplicate


def insert_for(session: AsyncSession, table: Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def ingest(session: AsyncSession, routing: Routing, alerts: list[Alert], now: datetime) -> IngestResult:
    return (await ingest_many(session, routing, [(alerts, now)]))[0]


async def ingest_many(
    session: AsyncSession, routing: Routing, requests: list[tuple[list[Alert], datetime]]
) -> list[IngestResult]:
    """Requests (alerts, received at) stored in one transaction as if one after the other.

    Each request is judged against what the ones before it left (the database's rows,
    read once for the batch, updated here as the batch changes them); the batch is then
    written in a few statements: the alerts' final rows, their groups and memberships
    once for all requests. A storm's requests each touch the same groups, and a group
    row per request and group was as many rows as alerts. A group takes the time of the
    first request that changed it, as it did one request at a time (later ones leave a
    due group's timer alone). Lock order: alerts (by fingerprint), groups, members."""
    state = await _known(session, sorted({a.fp for alerts, _ in requests for a in alerts}))
    results: list[IngestResult] = []
    rows: dict[str, dict[str, Any]] = {}  # fingerprint -> its new row (new or changed)
    touches: dict[str, dict[str, Any]] = {}  # fingerprint -> a later endsAt for a known row
    groups: dict[str, dict[str, Any]] = {}
    members: set[tuple[str, str]] = set()
    for alerts, now in requests:
        result = IngestResult()
        by_fp: dict[str, Alert] = {}
        for a in alerts:
            if a.fp in by_fp:
                result.duplicate += 1
            by_fp[a.fp] = a  # the last copy in one request wins
        for fp in sorted(by_fp):
            a = by_fp[fp]
            old = state.get(fp)
            if old is None or old[0] != a.status or (a.status == "resolved" and old[1] != a.starts_at):
                if old is None:
                    result.new += 1
                else:
                    result.changed += 1
                rows[fp] = _row(routing, a, now)
                touches.pop(fp, None)  # the whole row is written: it has the later values
                state[fp] = (a.status, a.starts_at, a.ends_at)
                for p in place(routing.tree, a.labels):
                    if p.group_id not in groups:
                        groups[p.group_id] = {
                            "route_id": p.route.id,
                            "receiver": p.route.receiver,
                            "group_labels": p.group_labels,
                            "at": now,
                        }
                    members.add((p.group_id, a.fp))
                continue
            result.duplicate += 1
            if a.status == "firing" and old[1] != a.starts_at:
                # The same firing alert from the other half of an HA pair (it evaluated at
                # another moment): one episode, which started at the earlier time. Not news.
                a.starts_at = min(a.starts_at, old[1])
            elif old[2] == a.ends_at:
                continue
            # The same alert again, with a later endsAt: it keeps firing.
            touch = {"starts_at": a.starts_at, "ends_at": a.ends_at, "annotations": a.annotations, "updated_at": now}
            if fp in rows:
                rows[fp].update(touch)
            else:
                touches[fp] = {"t_fp": fp, **{f"t_{k}": v for k, v in touch.items()}}
            state[fp] = (old[0], a.starts_at, a.ends_at)
        results.append(result)
    if rows:
        await session.execute(_statement(session, "alerts"), [rows[fp] for fp in sorted(rows)])
    if touches:
        await session.execute(_TOUCH, [touches[fp] for fp in sorted(touches)])
    if groups:
        await mark_due(session, routing, groups, requests[0][1])
        await session.execute(
            _statement(session, "members"),
            [{"group_id": g, "fingerprint": fp, "pending": True} for g, fp in sorted(members)],
        )
    return results


async def _known(session: AsyncSession, fps: list[str]) -> dict[str, tuple[str, datetime, datetime | None]]:
    """(status, starts_at, ends_at) of the alerts stored under these fingerprints."""
    a_ = t.alerts.c
    known: dict[str, tuple[str, datetime, datetime | None]] = {}
    for i in range(0, len(fps), CHUNK):
        found = await session.execute(
            select(a_.fingerprint, a_.status, a_.starts_at, a_.ends_at).where(a_.fingerprint.in_(fps[i : i + CHUNK]))
        )
        known.update({fp: (status, starts, ends) for fp, status, starts, ends in found})
    return known


def _row(routing: Routing, a: Alert, now: datetime) -> dict[str, Any]:
    keys = inhibit_keys(routing.rules, a.labels)
    return {
        "fingerprint": a.fp,
        "labels": a.labels,
        "annotations": a.annotations,
        "status": a.status,
        "starts_at": a.starts_at,
        "ends_at": a.ends_at,
        "source": a.source,
        "generator_url": a.generator_url,
        "tenant": a.labels.get("tenant"),
        "oneshot": a.oneshot,
        "inhibits": keys or None,
        "inhibit_source": bool(keys),
        "changed_at": now,
        "updated_at": now,
    }


_a = t.alerts.c
_TOUCH = (
    update(t.alerts)
    .where(_a.fingerprint == bindparam("t_fp"))
    .values(
        starts_at=bindparam("t_starts_at"),
        ends_at=bindparam("t_ends_at"),
        annotations=bindparam("t_annotations"),
        updated_at=bindparam("t_updated_at"),
    )
)


async def mark_due(session: AsyncSession, routing: Routing, groups: dict[str, dict[str, Any]], now: datetime) -> None:
    """Create the groups that are new (due after group_wait) and make idle ones due: at
    once, or when their group_interval since the last notification has passed. A group's
    "at" (when the change came) is `now` unless it says otherwise."""
    if not groups:
        return
    rows = []
    for gid in sorted(groups):
        g = dict(groups[gid])
        at = g.pop("at", now)
        wait = routing.timing(g["route_id"]).group_wait_s
        rows.append({"id": gid, **g, "due_at": at + timedelta(seconds=wait), "notifications": 0, "created_at": at})
    await session.execute(_statement(session, "groups"), rows)


_STATEMENTS: dict[tuple[str, str], Any] = {}


def _statement(session: AsyncSession, name: str) -> Any:
    """The ingest's upserts, built once per dialect: each runs as one executemany, so it is
    compiled once and cached whatever the batch size."""
    dialect = session.get_bind().dialect.name
    found = _STATEMENTS.get((dialect, name))
    if found is not None:
        return found
    if name == "alerts":
        ins = insert_for(session, t.alerts)
        cols = {c.name: ins.excluded[c.name] for c in t.alerts.c if c.name != "fingerprint"}
        stmt = ins.on_conflict_do_update(index_elements=["fingerprint"], set_=cols)
    elif name == "members":
        ins = insert_for(session, t.group_members)
        stmt = ins.on_conflict_do_update(index_elements=["group_id", "fingerprint"], set_={"pending": True})
    else:
        g_ = t.alert_groups.c
        ins = insert_for(session, t.alert_groups)
        at = ins.excluded.created_at  # "now", carried in the row
        later = case((g_.hold_until > at, g_.hold_until), else_=at)
        due = case(
            (g_.due_at.is_(None), case((g_.last_notified_at.is_(None), ins.excluded.due_at), else_=later)),
            else_=g_.due_at,
        )
        stmt = ins.on_conflict_do_update(index_elements=["id"], set_={"due_at": due})
    _STATEMENTS[(dialect, name)] = stmt
    return stmt


async def expire_alerts(session: AsyncSession, routing: Routing, now: datetime, limit: int = 1000) -> int:
    """Firing alerts whose endsAt passed without a new post resolve; their groups flush."""
    a_ = t.alerts.c
    fps = list(
        (
            await session.execute(
                select(a_.fingerprint)
                .where(a_.status == "firing", a_.ends_at.is_not(None), a_.ends_at <= now)
                .order_by(a_.fingerprint)
                .limit(limit)
            )
        ).scalars()
    )
    if not fps:
        return 0
    await session.execute(
        update(t.alerts).where(a_.fingerprint.in_(fps)).values(status="resolved", changed_at=now, updated_at=now)
    )
    m_ = t.group_members.c
    rows = (
        await session.execute(
            select(
                t.alert_groups.c.id, t.alert_groups.c.route_id, t.alert_groups.c.receiver, t.alert_groups.c.group_labels
            )
            .join(t.group_members, m_.group_id == t.alert_groups.c.id)
            .where(m_.fingerprint.in_(fps))
            .distinct()
        )
    ).all()
    await mark_due(
        session,
        routing,
        {r.id: {"route_id": r.route_id, "receiver": r.receiver, "group_labels": r.group_labels} for r in rows},
        now,
    )
    await session.execute(update(t.group_members).where(m_.fingerprint.in_(fps)).values(pending=True))
    return len(fps)

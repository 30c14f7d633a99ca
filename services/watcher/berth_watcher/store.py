"""The watcher's records: runs, sightings and findings (with their events, in the same
transaction as the change: the outbox)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_shared.bus import SYSTEM_TENANT
from berth_shared.db import Database, EventWriter, affected
from berth_shared.errors import NotFound
from berth_shared.messages.watcher import (
    Finding,
    FindingAction,
    FindingKind,
    FindingQuery,
    JobName,
    RunAction,
    RunTrigger,
    SourceReport,
    WatcherRun,
)
from berth_watcher import tables as t
from berth_watcher.findings import Plan, Sighting, StoredFinding, describe
from berth_watcher.model import Observation

FINISHED = ("complete", "partial", "failed")
MAX_ACTIONS_KEPT = 200  # per run record; the count says how many there were


def now() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def event_tenant(tenant: str | None) -> str:
    return tenant or SYSTEM_TENANT


@dataclass
class RunResult:
    """What a job did, for its run record."""

    sources: list[SourceReport] = field(default_factory=list)
    actions: list[RunAction] = field(default_factory=list)
    opened: int = 0
    resolved: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def partial(self) -> bool:
        return any(not s.ok for s in self.sources)

    def act(self, kind: str, target: str, outcome: str, detail: str = "") -> None:
        self.actions.append(RunAction(kind=kind, target=target, outcome=outcome, detail=detail[:500]))


# -- runs ------------------------------------------------------------------------------------


def run_out(row: Row[Any]) -> WatcherRun:
    m = dict(row._mapping)
    m.pop("epoch", None)
    severity = "info" if m["status"] in ("queued", "running", "complete") else "warning"
    return WatcherRun.model_validate(m | {"severity": severity})


async def queue_run(db: Database, job: JobName, trigger: RunTrigger, requested_by: str) -> str:
    """A queued run of `job`; one already waiting is reused (runs do not pile up)."""
    async with db.transaction() as s:
        return await queue_run_in(s, job, trigger, requested_by)


async def queue_run_in(s: AsyncSession, job: JobName, trigger: RunTrigger, requested_by: str) -> str:
    waiting = (
        await s.execute(select(t.runs.c.id).where(t.runs.c.job == job, t.runs.c.status == "queued").limit(1))
    ).scalar()
    if waiting is not None:
        return str(waiting)
    run_id = new_id("run")
    await s.execute(
        t.runs.insert().values(
            id=run_id,
            job=job,
            trigger=trigger,
            status="queued",
            partial=False,
            requested_by=requested_by,
            requested_at=now(),
            sources=[],
            actions=[],
            summary={},
        )
    )
    return run_id


async def next_queued(db: Database, job: JobName) -> str | None:
    async with db.sessions() as s:
        q = select(t.runs.c.id).where(t.runs.c.job == job, t.runs.c.status == "queued").order_by(t.runs.c.requested_at)
        found = (await s.execute(q.limit(1))).scalar()
    return str(found) if found is not None else None


async def last_start(db: Database, job: JobName) -> datetime | None:
    async with db.sessions() as s:
        q = select(func.max(t.runs.c.started_at)).where(t.runs.c.job == job)
        value: datetime | None = (await s.execute(q)).scalar()
    return value


async def claim_run(db: Database, run_id: str, owner: str, epoch: int, check: Callable[..., Any]) -> bool:
    async with db.transaction() as s:
        await check(s, epoch)
        res = await s.execute(
            update(t.runs)
            .where(t.runs.c.id == run_id, t.runs.c.status == "queued")
            .values(status="running", owner=owner, epoch=epoch, started_at=now())
        )
        return affected(res) == 1


async def finish_run(db: Database, events: EventWriter, run_id: str, result: RunResult) -> WatcherRun:
    status = "failed" if result.error else "partial" if result.partial else "complete"
    async with db.transaction() as s:
        open_count = (
            await s.execute(select(func.count()).select_from(t.findings).where(t.findings.c.state != "resolved"))
        ).scalar_one()
        summary = result.summary | ({"actions_total": len(result.actions)} if result.actions else {})
        await s.execute(
            update(t.runs)
            .where(t.runs.c.id == run_id)
            .values(
                status=status,
                partial=result.partial,
                finished_at=now(),
                sources=[r.model_dump(mode="json") for r in result.sources],
                actions=[a.model_dump(mode="json") for a in result.actions[:MAX_ACTIONS_KEPT]],
                findings_opened=result.opened,
                findings_resolved=result.resolved,
                findings_open=open_count,
                error=result.error,
                summary=summary,
            )
        )
        out = run_out((await s.execute(select(t.runs).where(t.runs.c.id == run_id))).one())
        await events.emit(s, SYSTEM_TENANT, "watcher_run", "finished", run_id, out.model_dump(mode="json"))
    events.notify()
    return out


async def interrupt_stale(db: Database, events: EventWriter, epoch: int) -> int:
    """Runs a dead or deposed leader left running: partial, nothing more happens in them."""
    async with db.sessions() as s:
        rows = (
            await s.execute(select(t.runs.c.id).where(t.runs.c.status == "running", t.runs.c.epoch < epoch))
        ).scalars()
        stale = [str(r) for r in rows]
    for run_id in stale:
        result = RunResult(
            sources=[SourceReport(name="run", ok=False, error="interrupted: its leader stopped mid-run")],
        )
        await finish_run(db, events, run_id, result)
    return len(stale)


async def get_run(db: Database, run_id: str) -> WatcherRun:
    async with db.sessions() as s:
        row = (await s.execute(select(t.runs).where(t.runs.c.id == run_id))).first()
    if row is None:
        raise NotFound(f"run {run_id} not found", reason="run_not_found")
    return run_out(row)


async def list_runs(db: Database, job: JobName | None, limit: int, starting_token: str | None) -> list[WatcherRun]:
    q = select(t.runs).order_by(t.runs.c.requested_at.desc(), t.runs.c.id.desc()).limit(limit + 1)
    if job:
        q = q.where(t.runs.c.job == job)
    async with db.sessions() as s:
        if starting_token:
            at = (await s.execute(select(t.runs.c.requested_at).where(t.runs.c.id == starting_token))).scalar()
            if at is not None:
                q = q.where(t.runs.c.requested_at <= at, t.runs.c.id != starting_token)
        rows = (await s.execute(q)).all()
    return [run_out(r) for r in rows]


# -- findings --------------------------------------------------------------------------------


def finding_out(row: Row[Any]) -> Finding:
    m = dict(row._mapping)
    for k in ("key", "open_key", "scope", "requested_action"):
        m.pop(k, None)
    return Finding.model_validate(m)


async def load_state(
    db: Database, kinds: Iterable[FindingKind]
) -> tuple[dict[str, Sighting], dict[str, StoredFinding]]:
    kinds = list(kinds)
    async with db.sessions() as s:
        sightings = {
            r.key: Sighting(r.key, r.scope, r.first_seen_at, r.last_seen_at)
            for r in (await s.execute(select(t.sightings).where(t.sightings.c.kind.in_(kinds)))).all()
        }
        q = select(t.findings.c.id, t.findings.c.key, t.findings.c.scope, t.findings.c.state).where(
            t.findings.c.kind.in_(kinds), t.findings.c.state != "resolved"
        )
        found = {r.key: StoredFinding(r.id, r.key, r.scope, r.state) for r in (await s.execute(q)).all()}
    return sightings, found


def _chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def apply_plan(
    db: Database,
    events: EventWriter,
    run_id: str,
    plan: Plan,
    action_of: Callable[[FindingKind], FindingAction],
) -> tuple[int, int]:
    """Write a plan: sightings, new findings (finding.opened), refreshed and resolved ones
    (finding.resolved). Returns (opened, resolved)."""
    at = now()
    async with db.transaction() as s:
        for obs in plan.new_sightings:
            await s.execute(
                t.sightings.insert().values(
                    key=obs.key, kind=obs.kind, scope=obs.scope, first_seen_at=at, last_seen_at=at
                )
            )
        for keys in _chunks(plan.seen_sightings):
            await s.execute(update(t.sightings).where(t.sightings.c.key.in_(keys)).values(last_seen_at=at))
        for keys in _chunks(plan.dropped_sightings):
            await s.execute(delete(t.sightings).where(t.sightings.c.key.in_(keys)))
        for obs, first in plan.confirmed:
            await _open(s, events, run_id, obs, first, at, action_of)
        await _refresh(s, run_id, plan.refreshed, at, action_of)
        for fid in plan.resolved:
            await resolve(s, events, fid, "gone: no longer seen by a complete run", at)
    events.notify()
    return len(plan.confirmed), len(plan.resolved)


def _policy_action(obs: Observation, action_of: Callable[[FindingKind], FindingAction]) -> FindingAction:
    return action_of(obs.kind) if obs.actionable else "report"


async def _open(
    s: AsyncSession,
    events: EventWriter,
    run_id: str,
    obs: Observation,
    first: datetime,
    at: datetime,
    action_of: Callable[[FindingKind], FindingAction],
) -> None:
    action = _policy_action(obs, action_of)
    summary, advice = describe(obs, action)
    fid = new_id("fnd")
    await s.execute(
        t.findings.insert().values(
            id=fid,
            key=obs.key,
            open_key=obs.key,
            kind=obs.kind,
            scope=obs.scope,
            severity=obs.severity,
            state="open",
            tenant=obs.tenant,
            cluster_id=obs.cluster_id,
            resource_kind=obs.resource_kind,
            resource_id=obs.resource_id,
            summary=summary,
            advice=advice,
            action=action,
            details=obs.details | {"actionable": obs.actionable},
            first_seen_at=first,
            confirmed_at=at,
            last_seen_at=at,
            run_id=run_id,
        )
    )
    row = (await s.execute(select(t.findings).where(t.findings.c.id == fid))).one()
    await events.emit(s, event_tenant(obs.tenant), "finding", "opened", fid, finding_out(row).model_dump(mode="json"))


async def _refresh(
    s: AsyncSession,
    run_id: str,
    refreshed: list[tuple[str, Observation]],
    at: datetime,
    action_of: Callable[[FindingKind], FindingAction],
) -> None:
    if not refreshed:
        return
    ids = [fid for fid, _ in refreshed]
    current: dict[str, Row[Any]] = {}
    for chunk in _chunks(ids):
        q = select(t.findings.c.id, t.findings.c.details, t.findings.c.severity, t.findings.c.action)
        current.update({r.id: r for r in (await s.execute(q.where(t.findings.c.id.in_(chunk)))).all()})
    same: list[str] = []
    for fid, obs in refreshed:
        row = current.get(fid)
        details = obs.details | {"actionable": obs.actionable}
        action = _policy_action(obs, action_of)
        if row is not None and row.details == details and row.severity == obs.severity and row.action == action:
            same.append(fid)
            continue
        summary, advice = describe(obs, action)
        await s.execute(
            update(t.findings)
            .where(t.findings.c.id == fid)
            .values(
                details=details,
                severity=obs.severity,
                action=action,
                summary=summary,
                advice=advice,
                last_seen_at=at,
                run_id=run_id,
            )
        )
    for chunk in _chunks(same):
        await s.execute(update(t.findings).where(t.findings.c.id.in_(chunk)).values(last_seen_at=at, run_id=run_id))


async def resolve(s: AsyncSession, events: EventWriter, fid: str, resolution: str, at: datetime | None = None) -> None:
    res = await s.execute(
        update(t.findings)
        .where(t.findings.c.id == fid, t.findings.c.state != "resolved")
        .values(state="resolved", resolved_at=at or now(), resolution=resolution, open_key=None)
    )
    if affected(res) == 1:
        row = (await s.execute(select(t.findings).where(t.findings.c.id == fid))).one()
        await events.emit(
            s, event_tenant(row.tenant), "finding", "resolved", fid, finding_out(row).model_dump(mode="json")
        )


async def set_finding_state(s: AsyncSession, fid: str, state: str, **values: Any) -> None:
    await s.execute(update(t.findings).where(t.findings.c.id == fid).values(state=state, **values))


async def get_finding_row(db: Database, fid: str, tenant: str | None) -> Row[Any]:
    q = select(t.findings).where(t.findings.c.id == fid)
    if tenant is not None:
        q = q.where(t.findings.c.tenant == tenant)
    async with db.sessions() as s:
        row = (await s.execute(q)).first()
    if row is None:
        raise NotFound(f"finding {fid} not found", reason="finding_not_found")
    return row


async def list_findings(db: Database, q: FindingQuery, tenant: str | None) -> tuple[list[Finding], str | None]:
    """`tenant` None: every finding (admins); else that tenant's only."""
    c = t.findings.c
    query = select(t.findings).order_by(c.id).limit(q.limit + 1)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    elif q.tenant:
        query = query.where(c.tenant == q.tenant)
    if q.kind:
        query = query.where(c.kind == q.kind)
    if q.state:
        query = query.where(c.state == q.state)
    elif not q.include_resolved:
        query = query.where(c.state != "resolved")
    if q.cluster_id:
        query = query.where(c.cluster_id == q.cluster_id)
    if q.starting_token:
        query = query.where(c.id > q.starting_token)
    async with db.sessions() as s:
        rows = (await s.execute(query)).all()
    items = [finding_out(r) for r in rows[: q.limit]]
    return items, items[-1].id if len(rows) > q.limit else None


async def open_counts(db: Database) -> list[tuple[str, str, int]]:
    """(kind, severity, count) of the unresolved findings: the gauges."""
    async with db.sessions() as s:
        q = (
            select(t.findings.c.kind, t.findings.c.severity, func.count())
            .where(t.findings.c.state != "resolved")
            .group_by(t.findings.c.kind, t.findings.c.severity)
        )
        return [(str(k), str(sv), int(n)) for k, sv, n in (await s.execute(q)).all()]

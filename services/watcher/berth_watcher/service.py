"""The watcher's use cases, shared by the HTTP API and the bus commands.

Reads are served by any replica from the shared database. Anything that acts on storage
from an inventory (quarantine, purge) is queued for the leader's next orphans run, which
checks again before it acts; a restore acts at once (its conditional state change keeps a
concurrent purge out), from any replica.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import delete, func, select, update

from berth_shared.auth import Principal
from berth_shared.db import affected
from berth_shared.errors import Aborted, FailedPrecondition, NotFound
from berth_shared.messages.watcher import (
    CapacityForecast,
    Empty,
    Finding,
    FindingIgnore,
    FindingList,
    FindingQuery,
    ForecastList,
    JobName,
    QosPolicy,
    QosPolicyList,
    QosPolicySet,
    QosStatusList,
    QosStatusQuery,
    QosVolume,
    QuarantineEntry,
    QuarantineList,
    QuarantineQuery,
    RunQuery,
    UsageQuery,
    UsageReport,
    UsageRow,
    WatcherRun,
    WatcherRunList,
)
from berth_watcher import quarantine as q
from berth_watcher import store
from berth_watcher import tables as t
from berth_watcher.context import Core
from berth_watcher.jobs.orphans import QUARANTINABLE
from berth_watcher.runner import Scheduler
from berth_watcher.usage import Usage as UsageFigures
from berth_watcher.usage import thin_ratio

FINISHED = ("complete", "partial", "failed")


def _who(p: Principal) -> str:
    return p.user or p.tenant


class Watcher:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.db = core.db
        self.scheduler = Scheduler(core)

    # -- runs ------------------------------------------------------------------------------

    async def start_run(self, p: Principal, job: JobName, wait_s: float, trigger: str = "manual") -> WatcherRun:
        p.require_admin()
        run_id = await store.queue_run(self.db, job, trigger, _who(p))  # type: ignore[arg-type]
        self.scheduler.wake()
        return await self.wait_run(run_id, wait_s)

    async def wait_run(self, run_id: str, wait_s: float) -> WatcherRun:
        deadline = time.monotonic() + wait_s
        while True:
            run = await store.get_run(self.db, run_id)
            if run.status in FINISHED or time.monotonic() >= deadline:
                return run
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def get_run(self, p: Principal, run_id: str) -> WatcherRun:
        p.require_admin()
        return await store.get_run(self.db, run_id)

    async def list_runs(self, p: Principal, query: RunQuery) -> WatcherRunList:
        p.require_admin()
        rows = await store.list_runs(self.db, query.job, query.limit, query.starting_token)
        items = rows[: query.limit]
        return WatcherRunList(items=items, next_token=items[-1].id if len(rows) > query.limit else None)

    # -- findings ----------------------------------------------------------------------------

    async def list_findings(self, p: Principal, query: FindingQuery) -> FindingList:
        items, token = await store.list_findings(self.db, query, None if p.is_admin else p.tenant)
        return FindingList(items=items, next_token=token)

    async def get_finding(self, p: Principal, fid: str) -> Finding:
        return store.finding_out(await store.get_finding_row(self.db, fid, None if p.is_admin else p.tenant))

    async def ignore_finding(self, p: Principal, req: FindingIgnore) -> Finding:
        p.require_admin()
        async with self.db.transaction() as s:
            res = await s.execute(
                update(t.findings)
                .where(t.findings.c.id == req.id, t.findings.c.state.in_(("open", "ignored")))
                .values(state="ignored", resolution=f"ignored by {_who(p)}: {req.reason}", requested_action=None)
            )
        row = await store.get_finding_row(self.db, req.id, None)
        if affected(res) != 1:
            raise FailedPrecondition(f"finding {req.id} is {row.state}; only an open finding is ignored")
        return store.finding_out(row)

    async def quarantine_finding(self, p: Principal, fid: str, wait_s: float) -> QuarantineEntry:
        """Ask for a finding's object to be quarantined now; the leader does it (checking
        again first) in an orphans run queued for it."""
        p.require_admin()
        row = await store.get_finding_row(self.db, fid, None)
        if row.kind not in QUARANTINABLE:
            raise FailedPrecondition(f"a {row.kind} finding has no backend object to quarantine")
        if row.state in ("acting", "quarantined"):
            return await self._entry_of(fid, wait_s)
        if row.state != "open":
            raise FailedPrecondition(f"finding {fid} is {row.state}")
        if not row.details.get("actionable"):
            raise FailedPrecondition(
                f"finding {fid} is not quarantined: a PV references it, it is in use, or it has snapshots",
                reason="not_actionable",
            )
        async with self.db.transaction() as s:
            await s.execute(update(t.findings).where(t.findings.c.id == fid).values(requested_action="quarantine"))
        await store.queue_run(self.db, "orphans", "manual", _who(p))
        self.scheduler.wake()
        return await self._entry_of(fid, wait_s)

    async def _entry_of(self, fid: str, wait_s: float) -> QuarantineEntry:
        deadline = time.monotonic() + wait_s
        while True:
            async with self.db.sessions() as s:
                query = select(t.quarantine).where(t.quarantine.c.finding_id == fid).order_by(t.quarantine.c.id.desc())
                row = (await s.execute(query.limit(1))).first()
            if row is not None and row.state not in ("quarantining",):
                return q.entry_out(row)
            if time.monotonic() >= deadline:
                raise Aborted(
                    f"the quarantine of finding {fid} is queued for the next orphans run; ask again to follow it"
                )
            await asyncio.sleep(0.2)

    # -- quarantine --------------------------------------------------------------------------

    async def list_quarantine(self, p: Principal, query: QuarantineQuery) -> QuarantineList:
        p.require_admin()
        items, token = await q.list_entries(self.db, query)
        return QuarantineList(items=items, next_token=token)

    async def restore(self, p: Principal, qid: str) -> QuarantineEntry:
        p.require_admin()
        row = await q.begin_restore(self.db, qid)
        clusters, report = await self.core.sources.inventory.clusters()
        cluster = next((c for c in clusters or [] if c.id == row.cluster_id), None)
        if cluster is None:
            raise FailedPrecondition(
                f"cluster {row.cluster_id} is not reachable now ({report.error or 'not registered'}); "
                "retry: the restore goes on from where it is"
            )
        await q.finish_restore(self.db, self.core.events, row, self.core.sources.backends.of(cluster), _who(p))
        return q.entry_out(await q.get_row(self.db, qid))

    async def purge(self, p: Principal, qid: str, wait_s: float) -> QuarantineEntry:
        p.require_admin()
        await q.purge_now(self.db, qid)
        await store.queue_run(self.db, "orphans", "manual", _who(p))
        self.scheduler.wake()
        deadline = time.monotonic() + wait_s
        while True:
            row = await q.get_row(self.db, qid)
            if row.state in ("purged", "failed") or time.monotonic() >= deadline:
                return q.entry_out(row)
            await asyncio.sleep(0.2)

    # -- QoS ---------------------------------------------------------------------------------

    async def set_policy(self, p: Principal, req: QosPolicySet) -> QosPolicy:
        p.require_admin()
        at = store.now()
        async with self.db.transaction() as s:
            await s.execute(delete(t.qos_policies).where(t.qos_policies.c.volume_type == req.volume_type))
            await s.execute(
                t.qos_policies.insert().values(
                    volume_type=req.volume_type, spec=req.model_dump(mode="json"), updated_at=at
                )
            )
        await store.queue_run(self.db, "qos", "manual", _who(p))
        self.scheduler.wake()
        return QosPolicy.model_validate(req.model_dump() | {"updated_at": at})

    async def list_policies(self, p: Principal) -> QosPolicyList:
        async with self.db.sessions() as s:
            rows = (await s.execute(select(t.qos_policies).order_by(t.qos_policies.c.volume_type))).all()
        return QosPolicyList(items=[QosPolicy.model_validate(r.spec | {"updated_at": r.updated_at}) for r in rows])

    async def delete_policy(self, p: Principal, volume_type: str) -> Empty:
        p.require_admin()
        async with self.db.transaction() as s:
            res = await s.execute(delete(t.qos_policies).where(t.qos_policies.c.volume_type == volume_type))
        if affected(res) != 1:
            raise NotFound(f"no QoS policy for volume type {volume_type!r}", reason="policy_not_found")
        await store.queue_run(self.db, "qos", "manual", _who(p))
        self.scheduler.wake()
        return Empty()

    async def qos_status(self, p: Principal, query: QosStatusQuery) -> QosStatusList:
        p.require_admin()
        c = t.qos_state.c
        sel = select(t.qos_state).order_by(c.volume_id).limit(query.limit + 1)
        if query.saturated_only:
            sel = sel.where(c.saturated.is_(True))
        if query.tenant:
            sel = sel.where(c.tenant == query.tenant)
        if query.starting_token:
            sel = sel.where(c.volume_id > query.starting_token)
        async with self.db.sessions() as s:
            rows = (await s.execute(sel)).all()
        items = [
            QosVolume.model_validate({k: v for k, v in r._mapping.items() if k not in ("sample", "checked_at")})
            for r in rows[: query.limit]
        ]
        return QosStatusList(items=items, next_token=items[-1].volume_id if len(rows) > query.limit else None)

    # -- usage -------------------------------------------------------------------------------

    async def usage(self, p: Principal, query: UsageQuery) -> UsageReport:
        p.require_admin()
        c = t.usage_samples.c
        async with self.db.sessions() as s:
            latest = (await s.execute(select(func.max(c.at)))).scalar()
            if latest is None:
                return UsageReport(at=None, items=[])
            sel = select(t.usage_samples).where(c.at == latest).order_by(c.scope, c.key)
            if query.scope:
                sel = sel.where(c.scope == query.scope)
            rows = (await s.execute(sel)).all()
            forecasts = {r.cluster_id: r.data for r in (await s.execute(select(t.forecasts))).all()}
        items = []
        for r in rows:
            figures = UsageFigures(r.scope, r.key, r.volumes, r.provisioned_bytes, r.used_bytes)
            growth = forecasts.get(r.key, {}).get("growth_bytes_per_day") if r.scope == "cluster" else None
            items.append(
                UsageRow(
                    scope=r.scope,
                    key=r.key,
                    volumes=r.volumes,
                    provisioned_bytes=r.provisioned_bytes,
                    used_bytes=r.used_bytes,
                    overcommit_ratio=thin_ratio(figures, r.capacity_bytes),
                    capacity_bytes=r.capacity_bytes,
                    growth_bytes_per_day=growth,
                )
            )
        return UsageReport(at=latest, items=items)

    async def forecasts(self, p: Principal) -> ForecastList:
        p.require_admin()
        async with self.db.sessions() as s:
            rows = (await s.execute(select(t.forecasts).order_by(t.forecasts.c.cluster_id))).all()
        return ForecastList(items=[CapacityForecast.model_validate(r.data) for r in rows])

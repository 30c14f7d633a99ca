"""Bus commands `berth.watcher.<noun>.<verb>`: the same use cases as the HTTP API."""

from __future__ import annotations

from berth_shared.bus import CommandContext, CommandServer
from berth_shared.messages.common import ById
from berth_shared.messages.watcher import (
    PREFIX,
    Empty,
    Finding,
    FindingIgnore,
    FindingList,
    FindingQuery,
    ForecastList,
    NoArgs,
    QosPolicy,
    QosPolicyList,
    QosPolicyRef,
    QosPolicySet,
    QosStatusList,
    QosStatusQuery,
    QuarantineEntry,
    QuarantineList,
    QuarantineQuery,
    RunQuery,
    RunStart,
    UsageQuery,
    UsageReport,
    WatcherRun,
    WatcherRunList,
)
from berth_watcher.service import Watcher


def _wait(ctx: CommandContext) -> float:
    # Answer a moment before the caller's deadline, with what there is by then.
    return max(0.0, ctx.remaining_s() - 0.5)


def register_commands(server: CommandServer, svc: Watcher) -> None:
    @server.command(f"{PREFIX}.run.start", RunStart)
    async def run_start(req: RunStart, ctx: CommandContext) -> WatcherRun:
        return await svc.start_run(ctx.principal, req.job, min(req.wait_s, _wait(ctx)))

    @server.command(f"{PREFIX}.run.get", ById)
    async def run_get(req: ById, ctx: CommandContext) -> WatcherRun:
        return await svc.get_run(ctx.principal, req.id)

    @server.command(f"{PREFIX}.run.list", RunQuery)
    async def run_list(req: RunQuery, ctx: CommandContext) -> WatcherRunList:
        return await svc.list_runs(ctx.principal, req)

    @server.command(f"{PREFIX}.finding.list", FindingQuery)
    async def finding_list(req: FindingQuery, ctx: CommandContext) -> FindingList:
        return await svc.list_findings(ctx.principal, req)

    @server.command(f"{PREFIX}.finding.get", ById)
    async def finding_get(req: ById, ctx: CommandContext) -> Finding:
        return await svc.get_finding(ctx.principal, req.id)

    @server.command(f"{PREFIX}.finding.ignore", FindingIgnore)
    async def finding_ignore(req: FindingIgnore, ctx: CommandContext) -> Finding:
        return await svc.ignore_finding(ctx.principal, req)

    @server.command(f"{PREFIX}.finding.quarantine", ById)
    async def finding_quarantine(req: ById, ctx: CommandContext) -> QuarantineEntry:
        return await svc.quarantine_finding(ctx.principal, req.id, _wait(ctx))

    @server.command(f"{PREFIX}.quarantine.list", QuarantineQuery)
    async def quarantine_list(req: QuarantineQuery, ctx: CommandContext) -> QuarantineList:
        return await svc.list_quarantine(ctx.principal, req)

    @server.command(f"{PREFIX}.quarantine.restore", ById)
    async def quarantine_restore(req: ById, ctx: CommandContext) -> QuarantineEntry:
        return await svc.restore(ctx.principal, req.id)

    @server.command(f"{PREFIX}.quarantine.purge", ById)
    async def quarantine_purge(req: ById, ctx: CommandContext) -> QuarantineEntry:
        return await svc.purge(ctx.principal, req.id, _wait(ctx))

    @server.command(f"{PREFIX}.qos.policy_set", QosPolicySet)
    async def policy_set(req: QosPolicySet, ctx: CommandContext) -> QosPolicy:
        return await svc.set_policy(ctx.principal, req)

    @server.command(f"{PREFIX}.qos.policy_list", NoArgs)
    async def policy_list(req: NoArgs, ctx: CommandContext) -> QosPolicyList:
        return await svc.list_policies(ctx.principal)

    @server.command(f"{PREFIX}.qos.policy_delete", QosPolicyRef)
    async def policy_delete(req: QosPolicyRef, ctx: CommandContext) -> Empty:
        return await svc.delete_policy(ctx.principal, req.volume_type)

    @server.command(f"{PREFIX}.qos.status", QosStatusQuery)
    async def qos_status(req: QosStatusQuery, ctx: CommandContext) -> QosStatusList:
        return await svc.qos_status(ctx.principal, req)

    @server.command(f"{PREFIX}.usage.get", UsageQuery)
    async def usage_get(req: UsageQuery, ctx: CommandContext) -> UsageReport:
        return await svc.usage(ctx.principal, req)

    @server.command(f"{PREFIX}.forecast.list", NoArgs)
    async def forecast_list(req: NoArgs, ctx: CommandContext) -> ForecastList:
        return await svc.forecasts(ctx.principal)

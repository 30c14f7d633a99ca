"""HTTP API (/v1). Thin: parse, authenticate, call the Watcher, shape the response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request

from berth_shared.http import PROBLEM_RESPONSES, Caller
from berth_shared.messages.common import RESOURCE_ID_PATTERN, TENANT_NAME_PATTERN
from berth_shared.messages.watcher import (
    Empty,
    Finding,
    FindingIgnore,
    FindingKind,
    FindingList,
    FindingQuery,
    FindingState,
    ForecastList,
    JobName,
    QosPolicy,
    QosPolicyList,
    QosPolicySet,
    QosStatusList,
    QosStatusQuery,
    QuarantineEntry,
    QuarantineList,
    QuarantineQuery,
    QuarantineState,
    RunQuery,
    RunStart,
    UsageQuery,
    UsageReport,
    WatcherRun,
    WatcherRunList,
)
from berth_watcher.service import Watcher

PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=RESOURCE_ID_PATTERN)]
PathName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")]
QueryId = Annotated[str | None, Query(min_length=1, max_length=64, pattern=RESOURCE_ID_PATTERN)]
QueryTenant = Annotated[str | None, Query(min_length=1, max_length=64, pattern=TENANT_NAME_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Wait = Annotated[float, Query(ge=0, le=600, description="Wait up to this many seconds for the outcome.")]

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


def _svc(request: Request) -> Watcher:
    svc: Watcher = request.app.state.watcher
    return svc


@router.post("/runs", tags=["runs"])
async def start_run(body: RunStart, request: Request, caller: Caller) -> WatcherRun:
    """Queue a run of a job (the leader runs it); with `wait_s`, answer once it finished."""
    return await _svc(request).start_run(caller, body.job, body.wait_s)


@router.get("/runs", tags=["runs"])
async def list_runs(
    request: Request, caller: Caller, job: JobName | None = None, limit: Limit = 50, starting_token: QueryId = None
) -> WatcherRunList:
    return await _svc(request).list_runs(caller, RunQuery(job=job, limit=limit, starting_token=starting_token))


@router.get("/runs/{run_id}", tags=["runs"])
async def get_run(run_id: PathId, request: Request, caller: Caller) -> WatcherRun:
    return await _svc(request).get_run(caller, run_id)


@router.get("/findings", tags=["findings"])
async def list_findings(
    request: Request,
    caller: Caller,
    kind: FindingKind | None = None,
    state: FindingState | None = None,
    cluster_id: QueryId = None,
    tenant: QueryTenant = None,
    include_resolved: bool = False,
    limit: Limit = 100,
    starting_token: QueryId = None,
) -> FindingList:
    """Findings of the caller's tenant (admins: all, or one tenant's), open ones unless asked."""
    query = FindingQuery(
        kind=kind,
        state=state,
        cluster_id=cluster_id,
        tenant=tenant,
        include_resolved=include_resolved,
        limit=limit,
        starting_token=starting_token,
    )
    return await _svc(request).list_findings(caller, query)


@router.get("/findings/{finding_id}", tags=["findings"])
async def get_finding(finding_id: PathId, request: Request, caller: Caller) -> Finding:
    return await _svc(request).get_finding(caller, finding_id)


@router.post("/findings/{finding_id}/ignore", tags=["findings"])
async def ignore_finding(
    finding_id: PathId, request: Request, caller: Caller, reason: Annotated[str, Body(embed=True)]
) -> Finding:
    return await _svc(request).ignore_finding(caller, FindingIgnore(id=finding_id, reason=reason))


@router.post("/findings/{finding_id}/quarantine", tags=["findings"])
async def quarantine_finding(
    finding_id: PathId, request: Request, caller: Caller, wait_s: Wait = 60
) -> QuarantineEntry:
    """Quarantine the finding's backend object now (restorable until it is purged)."""
    return await _svc(request).quarantine_finding(caller, finding_id, wait_s)


@router.get("/quarantine", tags=["quarantine"])
async def list_quarantine(
    request: Request,
    caller: Caller,
    state: QuarantineState | None = None,
    tenant: QueryTenant = None,
    limit: Limit = 100,
    starting_token: QueryId = None,
) -> QuarantineList:
    query = QuarantineQuery(state=state, tenant=tenant, limit=limit, starting_token=starting_token)
    return await _svc(request).list_quarantine(caller, query)


@router.post("/quarantine/{entry_id}/restore", tags=["quarantine"])
async def restore(entry_id: PathId, request: Request, caller: Caller) -> QuarantineEntry:
    """Put a quarantined object back, its data untouched."""
    return await _svc(request).restore(caller, entry_id)


@router.post("/quarantine/{entry_id}/purge", tags=["quarantine"])
async def purge(entry_id: PathId, request: Request, caller: Caller, wait_s: Wait = 60) -> QuarantineEntry:
    """Purge a quarantined object now instead of at the end of its quarantine."""
    return await _svc(request).purge(caller, entry_id, wait_s)


@router.get("/qos/policies", tags=["qos"])
async def list_policies(request: Request, caller: Caller) -> QosPolicyList:
    return await _svc(request).list_policies(caller)


@router.put("/qos/policies/{volume_type}", tags=["qos"])
async def set_policy(
    volume_type: PathName, request: Request, caller: Caller, body: Annotated[dict[str, Any], Body()]
) -> QosPolicy:
    """Set a volume type's size-scaled limits (the body is a QosPolicySet without volume_type)."""
    return await _svc(request).set_policy(caller, QosPolicySet.model_validate(body | {"volume_type": volume_type}))


@router.delete("/qos/policies/{volume_type}", tags=["qos"])
async def delete_policy(volume_type: PathName, request: Request, caller: Caller) -> Empty:
    return await _svc(request).delete_policy(caller, volume_type)


@router.get("/qos/volumes", tags=["qos"])
async def qos_status(
    request: Request,
    caller: Caller,
    saturated_only: bool = False,
    tenant: QueryTenant = None,
    limit: Limit = 100,
    starting_token: QueryId = None,
) -> QosStatusList:
    query = QosStatusQuery(saturated_only=saturated_only, tenant=tenant, limit=limit, starting_token=starting_token)
    return await _svc(request).qos_status(caller, query)


@router.get("/usage", tags=["usage"])
async def usage(
    request: Request,
    caller: Caller,
    scope: Annotated[str | None, Query(pattern="^(tenant|cluster|volume_type)$")] = None,
) -> UsageReport:
    return await _svc(request).usage(caller, UsageQuery.model_validate({"scope": scope}))


@router.get("/forecasts", tags=["usage"])
async def forecasts(request: Request, caller: Caller) -> ForecastList:
    return await _svc(request).forecasts(caller)

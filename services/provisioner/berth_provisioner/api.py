"""HTTP API (/v1). Thin: parse, authenticate, call the Provisioner, shape the response."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from berth_provisioner.discovery import ClusterDiscover, discover
from berth_provisioner.service import Provisioner
from berth_shared.http import PROBLEM_RESPONSES, Caller
from berth_shared.messages.common import RESOURCE_ID_PATTERN, TENANT_NAME_PATTERN, ListQuery
from berth_shared.messages.provisioner import (
    Cluster,
    ClusterList,
    ClusterPatch,
    ClusterRegister,
    ClusterUpdate,
    GroupSnapshot,
    GroupSnapshotCreate,
    GroupSnapshotList,
    Quota,
    QuotaLimits,
    QuotaSet,
    Snapshot,
    SnapshotCreate,
    SnapshotList,
    SnapshotListQuery,
    Volume,
    VolumeCreate,
    VolumeExpandBody,
    VolumeList,
    VolumeRetypeBody,
    VolumeType,
    VolumeTypeCreate,
    VolumeTypeList,
)

# Ids in paths and queries are checked like the bus's: a malformed one is a 422, and a NUL
# byte never reaches PostgreSQL (which refuses it in text, which would be a 500).
PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=RESOURCE_ID_PATTERN)]
PathTenant = Annotated[str, Path(min_length=1, max_length=64, pattern=TENANT_NAME_PATTERN)]
QueryId = Annotated[str | None, Query(min_length=1, max_length=64, pattern=RESOURCE_ID_PATTERN)]


def _svc(request: Request) -> Provisioner:
    svc: Provisioner = request.app.state.provisioner
    return svc


def _wait(request: Request) -> float:
    return float(request.app.state.rt.settings.command_timeout_s)


router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


@router.post("/volumes", status_code=status.HTTP_201_CREATED, tags=["volumes"])
async def create_volume(body: VolumeCreate, request: Request, caller: Caller) -> Volume:
    """Create a volume. The name is the idempotency key: the same request again returns the same volume."""
    return await _svc(request).volumes.create(caller, body, _wait(request))


@router.get("/volumes", tags=["volumes"])
async def list_volumes(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    starting_token: QueryId = None,
    tenant: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z0-9_][a-z0-9_\-]*$")] = None,
) -> VolumeList:
    return await _svc(request).volumes.list(
        caller, ListQuery(limit=limit, starting_token=starting_token, tenant=tenant)
    )


@router.get("/volumes/{volume_id}", tags=["volumes"])
async def get_volume(volume_id: PathId, request: Request, caller: Caller) -> Volume:
    return await _svc(request).volumes.get(caller, volume_id)


@router.post("/volumes/{volume_id}/expand", tags=["volumes"])
async def expand_volume(volume_id: PathId, body: VolumeExpandBody, request: Request, caller: Caller) -> Volume:
    return await _svc(request).volumes.expand(caller, volume_id, body.size_gib, _wait(request))


@router.post("/volumes/{volume_id}/retype", tags=["volumes"])
async def retype_volume(volume_id: PathId, body: VolumeRetypeBody, request: Request, caller: Caller) -> Volume:
    """Move the volume to another volume type in place (its cluster must serve the type)."""
    return await _svc(request).volumes.retype(caller, volume_id, body.volume_type)


@router.delete("/volumes/{volume_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["volumes"])
async def delete_volume(volume_id: PathId, request: Request, caller: Caller) -> Response:
    await _svc(request).volumes.delete(caller, volume_id, _wait(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/snapshots", status_code=status.HTTP_201_CREATED, tags=["snapshots"])
async def create_snapshot(body: SnapshotCreate, request: Request, caller: Caller) -> Snapshot:
    return await _svc(request).snapshots.create(caller, body, _wait(request))


@router.get("/snapshots", tags=["snapshots"])
async def list_snapshots(
    request: Request,
    caller: Caller,
    volume_id: QueryId = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    starting_token: QueryId = None,
) -> SnapshotList:
    q = SnapshotListQuery(volume_id=volume_id, limit=limit, starting_token=starting_token)
    return await _svc(request).snapshots.list(caller, q)


@router.get("/snapshots/{snapshot_id}", tags=["snapshots"])
async def get_snapshot(snapshot_id: PathId, request: Request, caller: Caller) -> Snapshot:
    return await _svc(request).snapshots.get(caller, snapshot_id)


@router.delete("/snapshots/{snapshot_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["snapshots"])
async def delete_snapshot(snapshot_id: PathId, request: Request, caller: Caller) -> Response:
    await _svc(request).snapshots.delete(caller, snapshot_id, _wait(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/group-snapshots", status_code=status.HTTP_201_CREATED, tags=["group snapshots"])
async def create_group_snapshot(body: GroupSnapshotCreate, request: Request, caller: Caller) -> GroupSnapshot:
    """Snapshot several volumes at one point in time; the name is the idempotency key."""
    return await _svc(request).group_snapshots.create(caller, body, _wait(request))


@router.get("/group-snapshots", tags=["group snapshots"])
async def list_group_snapshots(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    starting_token: QueryId = None,
) -> GroupSnapshotList:
    return await _svc(request).group_snapshots.list(caller, ListQuery(limit=limit, starting_token=starting_token))


@router.get("/group-snapshots/{group_snapshot_id}", tags=["group snapshots"])
async def get_group_snapshot(group_snapshot_id: PathId, request: Request, caller: Caller) -> GroupSnapshot:
    return await _svc(request).group_snapshots.get(caller, group_snapshot_id)


@router.delete("/group-snapshots/{group_snapshot_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["group snapshots"])
async def delete_group_snapshot(group_snapshot_id: PathId, request: Request, caller: Caller) -> Response:
    """Delete a group snapshot with its member snapshots."""
    await _svc(request).group_snapshots.delete(caller, group_snapshot_id, _wait(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/clusters", status_code=status.HTTP_201_CREATED, tags=["clusters (admin)"])
async def register_cluster(body: ClusterRegister, request: Request, caller: Caller) -> Cluster:
    """Register a storage cluster; an active one takes new volumes at once."""
    return await _svc(request).clusters.register(caller, body)


@router.post("/clusters/discover", tags=["clusters (admin)"])
async def discover_clusters(body: ClusterDiscover, request: Request, caller: Caller) -> ClusterList:
    """Register every Cinder volume type or Manila share type of a clouds.yaml cloud as a
    cluster (with a volume type of the same name), sized from its scheduler pools."""
    svc = _svc(request)
    return await discover(svc.clusters, svc.volume_types, caller, body)


@router.get("/clusters", tags=["clusters (admin)"])
async def list_clusters(request: Request, caller: Caller) -> ClusterList:
    return await _svc(request).clusters.list(caller)


@router.patch("/clusters/{cluster_id}", tags=["clusters (admin)"])
async def update_cluster(cluster_id: PathId, body: ClusterPatch, request: Request, caller: Caller) -> Cluster:
    """Change a cluster's state (active/draining/readonly), capacity, ratio, types or tenants."""
    return await _svc(request).clusters.update(
        caller, ClusterUpdate(id=cluster_id, **body.model_dump(exclude_unset=True))
    )


@router.post("/volume-types", status_code=status.HTTP_201_CREATED, tags=["volume types"])
async def create_volume_type(body: VolumeTypeCreate, request: Request, caller: Caller) -> VolumeType:
    return await _svc(request).volume_types.create(caller, body)


@router.get("/volume-types", tags=["volume types"])
async def list_volume_types(request: Request, caller: Caller) -> VolumeTypeList:
    return await _svc(request).volume_types.list()


@router.put("/quotas/{tenant}", tags=["quotas"])
async def set_quota(tenant: PathTenant, body: QuotaLimits, request: Request, caller: Caller) -> Quota:
    return await _svc(request).quotas.set(
        caller, QuotaSet(tenant=tenant, volumes=body.volumes, gigabytes=body.gigabytes)
    )


@router.get("/quotas/{tenant}", tags=["quotas"])
async def get_quota(tenant: PathTenant, request: Request, caller: Caller) -> Quota:
    return await _svc(request).quotas.get(caller, tenant)

"""HTTP API (/v1) of the attacher."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from berth_attacher.service import Attacher
from berth_shared.http import PROBLEM_RESPONSES, Caller
from berth_shared.messages.attacher import (
    Attachment,
    AttachmentList,
    AttachmentQuery,
    DownReason,
    FenceList,
    Heartbeat,
    HeartbeatReply,
    Node,
    NodeDown,
    NodeList,
    NodeSignals,
    NodeStatus,
    Publish,
    UnfenceBody,
    UnfenceRequest,
    Unpublish,
)

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


def _svc(request: Request) -> Attacher:
    svc: Attacher = request.app.state.attacher
    return svc


@router.post("/attachments", status_code=status.HTTP_201_CREATED, tags=["attachments"])
async def publish(body: Publish, request: Request, caller: Caller) -> Attachment:
    """Grant a node access to a volume. A single-writer volume held by another node: 409 naming the holder."""
    return await _svc(request).grants.publish(caller, body)


@router.delete("/attachments", status_code=status.HTTP_204_NO_CONTENT, tags=["attachments"])
async def unpublish(
    request: Request,
    caller: Caller,
    volume_id: Annotated[str, Query(max_length=64)],
    node_id: Annotated[str, Query(max_length=128)],
) -> Response:
    await _svc(request).grants.unpublish(caller, Unpublish(volume_id=volume_id, node_id=node_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/attachments", tags=["attachments"])
async def list_attachments(
    request: Request,
    caller: Caller,
    volume_id: Annotated[str | None, Query(max_length=64)] = None,
    node_id: Annotated[str | None, Query(max_length=128)] = None,
) -> AttachmentList:
    return await _svc(request).grants.list(caller, AttachmentQuery(volume_id=volume_id, node_id=node_id))


@router.post("/nodes/heartbeat", tags=["nodes"])
async def heartbeat(body: Heartbeat, request: Request, caller: Caller) -> HeartbeatReply:
    return await _svc(request).nodes.heartbeat(caller, body)


@router.get("/nodes", tags=["nodes"])
async def list_nodes(request: Request, caller: Caller) -> NodeList:
    return await _svc(request).nodes.list(caller)


@router.get("/nodes/{node_id}", tags=["nodes"])
async def get_node(node_id: str, request: Request, caller: Caller) -> Node:
    return await _svc(request).nodes.get(caller, node_id)


@router.post("/nodes/{node_id}/status", tags=["nodes (admin)"])
async def node_status(node_id: str, body: NodeSignals, request: Request, caller: Caller) -> Node:
    """Signals from outside the node: Kubernetes Ready condition, out-of-service taint."""
    return await _svc(request).nodes.status(caller, NodeStatus(node_id=node_id, **body.model_dump()))


@router.post("/nodes/{node_id}/down", tags=["nodes (admin)"])
async def node_down(node_id: str, body: DownReason, request: Request, caller: Caller) -> Node:
    """Declare a node down: it is fenced as the policy allows, then its volumes move."""
    return await _svc(request).fencing.node_down(caller, NodeDown(node_id=node_id, reason=body.reason))


@router.post("/nodes/{node_id}/fence", tags=["nodes (admin)"])
async def approve_fence(node_id: str, request: Request, caller: Caller) -> Node:
    return await _svc(request).fencing.approve(caller, node_id)


@router.post("/nodes/{node_id}/unfence", tags=["nodes"])
async def unfence(node_id: str, body: UnfenceBody, request: Request, caller: Caller) -> Node:
    """A node agent, having dropped every mount, asks to be unfenced."""
    return await _svc(request).unfencing.request(caller, UnfenceRequest(node_id=node_id, **body.model_dump()))


@router.post("/nodes/{node_id}/force-unfence", tags=["nodes (admin)"])
async def force_unfence(node_id: str, request: Request, caller: Caller) -> Node:
    """An admin vouches that the node holds nothing any more and unfences it."""
    return await _svc(request).unfencing.by_admin(caller, node_id)


@router.get("/fences", tags=["nodes (admin)"])
async def list_fences(
    request: Request, caller: Caller, node_id: Annotated[str | None, Query(max_length=128)] = None
) -> FenceList:
    return await _svc(request).fencing.list_fences(caller, node_id)

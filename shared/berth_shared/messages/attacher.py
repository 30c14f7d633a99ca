"""Attacher commands (`berth.attacher.<noun>.<verb>`), replies and event payloads."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from berth_shared.messages.common import Message, Reply, ResourceId, ResourceName

PREFIX = "berth.attacher"

# CSI access modes (VolumeCapability.AccessMode.Mode), lower-cased.
AccessMode = Literal[
    "single_node_writer",
    "single_node_reader_only",
    "multi_node_reader_only",
    "multi_node_single_writer",
    "multi_node_multi_writer",
    "single_node_single_writer",
    "single_node_multi_writer",
]
SINGLE_NODE_MODES = frozenset(
    {"single_node_writer", "single_node_reader_only", "single_node_single_writer", "single_node_multi_writer"}
)
AttachmentState = Literal["attached", "released"]
NodeState = Literal["alive", "suspect", "dead", "fencing", "fenced", "awaiting_approval"]
NodeId = ResourceName


class Publish(Message):
    volume_id: ResourceId
    node_id: NodeId
    access_mode: AccessMode = "single_node_writer"
    readonly: bool = False


class Unpublish(Message):
    volume_id: ResourceId
    node_id: NodeId


class Attachment(Reply):
    id: str
    volume_id: str
    tenant: str
    node_id: str
    access_mode: str
    readonly: bool
    state: AttachmentState
    generation: int
    backend: str
    publish_context: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class AttachmentQuery(Message):
    volume_id: ResourceId | None = None
    node_id: NodeId | None = None


class AttachmentList(Reply):
    items: list[Attachment]
    # Set by the paged inventory (`berth.attacher.inventory.attachments`) while more follow.
    next_token: str | None = None


class StagedVolume(Message):
    volume_id: ResourceId
    device: str | None = None
    mount: str | None = None
    # The storage client address this node uses for the volume (Ceph: what to blocklist).
    client_address: str | None = Field(default=None, max_length=128)


class Heartbeat(Message):
    node_id: NodeId
    # Changes when the agent restarts: the attacher learns the node came back.
    boot_id: str = Field(min_length=1, max_length=64)
    zone: ResourceName | None = None
    # The node's max_volumes_per_node: publishes beyond it are refused (0: no limit).
    max_volumes: int = Field(default=0, ge=0, strict=True)
    staged: list[StagedVolume] = Field(default_factory=list)


class HeartbeatReply(Reply):
    node_id: str
    state: NodeState
    fenced: bool
    fence_epoch: int
    # Volumes the node must not (re-)stage: fenced away from it.
    blocked_volumes: list[str] = Field(default_factory=list)


class NodeSignals(Message):
    """Signals from outside the node (watcher: Kubernetes Ready / out-of-service taint)."""

    ready: bool | None = None
    out_of_service: bool | None = None


class NodeStatus(NodeSignals):
    node_id: NodeId


class NodeRef(Message):
    node_id: NodeId


class DownReason(Message):
    reason: str = Field(default="declared down by an admin", max_length=500)


class NodeDown(DownReason):
    node_id: NodeId


class UnfenceBody(Message):
    boot_id: str = Field(min_length=1, max_length=64)
    # What the node still has mounted or attached; must be empty to be unfenced.
    staged: list[StagedVolume] = Field(default_factory=list)


class UnfenceRequest(UnfenceBody):
    node_id: NodeId


class Node(Reply):
    id: str
    state: NodeState
    zone: str | None
    max_volumes: int = 0
    boot_id: str | None
    last_heartbeat_at: datetime | None
    ready: bool | None
    out_of_service: bool | None
    fence_epoch: int
    fenced_at: datetime | None
    state_reason: str | None
    created_at: datetime
    updated_at: datetime


class NodeList(Reply):
    items: list[Node]


class Fence(Reply):
    id: str
    node_id: str
    epoch: int
    state: Literal["pending", "done", "failed"]
    reason: str
    results: dict[str, list[str]] = Field(default_factory=dict)
    created_at: datetime
    completed_at: datetime | None


class FenceList(Reply):
    items: list[Fence]


class Empty(Reply):
    pass

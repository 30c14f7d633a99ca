"""What every attacher use case works with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from berth_attacher.liveness import Policy
from berth_attacher.locator import Locator
from berth_shared.auth import Principal
from berth_shared.db import Database, EventWriter
from berth_shared.errors import PermissionDenied
from berth_shared.operations import OperationRunner

NODE_ROLE = "node"


class Tainter(Protocol):
    """Applies/removes `node.kubernetes.io/out-of-service` where a Kubernetes API is configured."""

    async def taint(self, node_id: str) -> None: ...
    async def untaint(self, node_id: str) -> None: ...


@dataclass
class Context:
    db: Database
    events: EventWriter
    locator: Locator
    policy: Policy
    # Runs the fences (see fencing.py), as this replica.
    runner: OperationRunner
    tainter: Tainter | None = None


def require_node_or_admin(p: Principal) -> None:
    if not (p.is_admin or NODE_ROLE in p.roles):
        raise PermissionDenied("node agents need the node (or admin) role")

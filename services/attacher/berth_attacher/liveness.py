"""When is a node dead, and may we fence it now (pure; no I/O).

Fencing is safe but disruptive, so the policy errs on the side of not fencing: a node is
dead only on a clear signal, and a cap plus a rate limit stop a network blip that silences
many nodes at once from fencing the fleet (a fencing storm).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Verdict = Literal["alive", "suspect", "dead"]


@dataclass(frozen=True)
class Policy:
    # Heartbeats come every `heartbeat_interval_s`; silence for `dead_after_s` is death.
    heartbeat_interval_s: float = 2.0
    dead_after_s: float = 10.0
    # Also require Kubernetes to report the node NotReady before calling it dead.
    require_not_ready: bool = False
    # `node.kubernetes.io/out-of-service` (set by a person or a tool) means dead at once.
    honour_out_of_service: bool = True
    # auto: fence dead nodes; manual: wait for an admin to approve each fence.
    fence_mode: Literal["auto", "manual"] = "auto"
    max_fenced_nodes: int = 3
    max_fences_per_window: int = 5
    fence_window_s: float = 600.0
    # auto_when_clean: unfence once the node proves it dropped its mounts; manual: admin only.
    unfence_mode: Literal["auto_when_clean", "manual"] = "auto_when_clean"


@dataclass(frozen=True)
class NodeView:
    id: str
    state: str
    last_heartbeat_at: datetime | None
    created_at: datetime
    ready: bool | None
    out_of_service: bool | None


def assess(node: NodeView, now: datetime, policy: Policy) -> tuple[Verdict, str]:
    """Liveness of a node that is alive or suspect (other states are handled elsewhere)."""
    if policy.honour_out_of_service and node.out_of_service:
        return "dead", "node has the out-of-service taint"
    seen = node.last_heartbeat_at or node.created_at
    silent = (now - seen).total_seconds()
    if silent >= policy.dead_after_s:
        if policy.require_not_ready and node.ready is not False:
            return "suspect", f"no heartbeat for {silent:.0f}s, but Kubernetes still reports it Ready"
        return "dead", f"no heartbeat for {silent:.0f}s"
    if silent >= max(policy.heartbeat_interval_s * 2, policy.dead_after_s / 2):
        return "suspect", f"no heartbeat for {silent:.0f}s"
    return "alive", "heartbeating"


def may_fence(now: datetime, fenced_now: int, recent_fences: list[datetime], policy: Policy) -> str | None:
    """None if a new fence may start; else why not."""
    if fenced_now >= policy.max_fenced_nodes:
        return f"{fenced_now} nodes already fenced (cap {policy.max_fenced_nodes})"
    window_start = now - timedelta(seconds=policy.fence_window_s)
    recent = sum(1 for t in recent_fences if t >= window_start)
    if recent >= policy.max_fences_per_window:
        return f"{recent} fences in the last {policy.fence_window_s:.0f}s (limit {policy.max_fences_per_window})"
    return None

"""The attacher's settings: the shared loader plus its liveness and fencing policy."""

from __future__ import annotations

from dataclasses import fields
from typing import Literal

from pydantic import Field

from berth_attacher.liveness import Policy
from berth_shared.settings import Settings

# The liveness defaults are the pure policy's (liveness.Policy): stated once, there.
_POLICY = Policy()


class AttacherSettings(Settings):
    service: str = "attacher"
    heartbeat_interval_s: float = Field(default=_POLICY.heartbeat_interval_s, gt=0)
    # The knob that trades speed for caution: longer waits out network blips, shorter fails over faster.
    dead_after_s: float = Field(default=_POLICY.dead_after_s, gt=0)
    require_not_ready: bool = _POLICY.require_not_ready
    honour_out_of_service: bool = _POLICY.honour_out_of_service
    fence_mode: Literal["auto", "manual"] = _POLICY.fence_mode
    max_fenced_nodes: int = Field(default=_POLICY.max_fenced_nodes, ge=1)
    max_fences_per_window: int = Field(default=_POLICY.max_fences_per_window, ge=1)
    fence_window_s: float = Field(default=_POLICY.fence_window_s, gt=0)
    unfence_mode: Literal["auto_when_clean", "manual"] = _POLICY.unfence_mode
    monitor_interval_s: float = Field(default=1.0, gt=0)
    # A fence's lease (renewed while it runs): how soon a replica takes over a crashed one's fence.
    operation_lease_s: float = Field(default=30.0, gt=0)
    # Kubernetes API for the out-of-service taint; unset: no taints.
    kube_api_url: str | None = None
    kube_token_file: str | None = None
    kube_ca_file: str | None = None

    def policy(self) -> Policy:
        return Policy(**{f.name: getattr(self, f.name) for f in fields(Policy)})

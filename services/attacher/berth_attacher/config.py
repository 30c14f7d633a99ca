"""The attacher's settings: the shared loader plus its liveness and fencing policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from berth_attacher.liveness import Policy
from berth_shared.settings import Settings


class AttacherSettings(Settings):
    service: str = "attacher"
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    # The knob that trades speed for caution: longer waits out network blips, shorter fails over faster.
    dead_after_s: float = Field(default=10.0, gt=0)
    require_not_ready: bool = False
    honour_out_of_service: bool = True
    fence_mode: Literal["auto", "manual"] = "auto"
    max_fenced_nodes: int = Field(default=3, ge=1)
    max_fences_per_window: int = Field(default=5, ge=1)
    fence_window_s: float = Field(default=600.0, gt=0)
    unfence_mode: Literal["auto_when_clean", "manual"] = "auto_when_clean"
    monitor_interval_s: float = Field(default=1.0, gt=0)
    # A fence's lease (renewed while it runs): how soon a replica takes over a crashed one's fence.
    operation_lease_s: float = Field(default=30.0, gt=0)
    # Kubernetes API for the out-of-service taint; unset: no taints.
    kube_api_url: str | None = None
    kube_token_file: str | None = None
    kube_ca_file: str | None = None

    def policy(self) -> Policy:
        return Policy(
            heartbeat_interval_s=self.heartbeat_interval_s,
            dead_after_s=self.dead_after_s,
            require_not_ready=self.require_not_ready,
            honour_out_of_service=self.honour_out_of_service,
            fence_mode=self.fence_mode,
            max_fenced_nodes=self.max_fenced_nodes,
            max_fences_per_window=self.max_fences_per_window,
            fence_window_s=self.fence_window_s,
            unfence_mode=self.unfence_mode,
        )

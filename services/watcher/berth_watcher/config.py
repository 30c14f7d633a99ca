"""The watcher's settings: the shared loader plus its intervals, grace periods and policy.

Every setting is a `BERTH_*` variable (e.g. `BERTH_ORPHANS_INTERVAL_S`,
`BERTH_ACTION_BACKEND_ORPHAN=quarantine`, `BERTH_KUBECONFIGS=/etc/berth/a.yaml,/etc/berth/b.yaml`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from berth_shared.messages.watcher import FindingAction, FindingKind, JobName
from berth_shared.settings import Settings

DAY = 86400.0


class WatcherSettings(Settings):
    service: str = "watcher"

    # -- schedule: each job runs every interval (and on demand) on the leader only --------
    qos_interval_s: float = Field(default=60.0, gt=0)
    orphans_interval_s: float = Field(default=60.0, gt=0)
    reclaim_interval_s: float = Field(default=300.0, gt=0)
    usage_interval_s: float = Field(default=300.0, gt=0)
    # The leader lease: a standby takes over this long after the leader stops renewing.
    lease_ttl_s: float = Field(default=15.0, ge=2.0)
    tick_s: float = Field(default=1.0, gt=0)

    # -- sources ------------------------------------------------------------------------------
    # Kubeconfig files, one per Kubernetes cluster (each file's current context); "in-cluster"
    # for the pod's service account. Empty: no Kubernetes (findings that need it are not made).
    kubeconfigs: str = ""
    kube_timeout_s: float = Field(default=20.0, gt=0)
    kube_page_size: int = Field(default=500, ge=1, le=5000)
    csi_driver: str = "csi.berth.dev"
    # Bus inventories (provisioner, attacher): page size and per-page deadline.
    inventory_page_size: int = Field(default=1000, ge=1, le=2000)
    inventory_timeout_s: float = Field(default=30.0, gt=0)

    # -- orphans: grace periods (from first sight, or the object's age where known) ---------
    grace_backend_orphan_s: float = Field(default=120.0, ge=0)
    grace_volume_without_pv_s: float = Field(default=3600.0, ge=0)
    grace_pv_volume_missing_s: float = Field(default=120.0, ge=0)
    grace_stale_attachment_s: float = Field(default=600.0, ge=0)
    grace_single_writer_violation_s: float = Field(default=0.0, ge=0)
    grace_qos_saturated_s: float = Field(default=0.0, ge=0)
    grace_capacity_threshold_s: float = Field(default=0.0, ge=0)
    # What to do with each kind: report only (the default), or act.
    action_backend_orphan: Literal["report", "quarantine"] = "report"
    action_volume_without_pv: Literal["report", "quarantine"] = "report"
    action_stale_attachment: Literal["report", "unpublish"] = "report"
    quarantine_s: float = Field(default=7 * DAY, ge=0)
    # Actions a run may take at most (a run finding more acts on the oldest, the rest wait).
    max_actions_per_run: int = Field(default=100, ge=0)

    # -- reclaim ---------------------------------------------------------------------------
    reclaim_ttl_s: float = Field(default=DAY, ge=0)
    reclaim_enabled: bool = True

    # -- QoS -------------------------------------------------------------------------------
    # Volumes whose held limits are read back each run (drift), oldest check first.
    qos_drift_checks_per_run: int = Field(default=1000, ge=0)

    # -- usage -----------------------------------------------------------------------------
    fill_threshold: float = Field(default=0.85, gt=0, le=1.0)
    forecast_window_days: float = Field(default=14.0, gt=0)
    forecast_warning_days: float = Field(default=14.0, ge=0)
    usage_retention_days: float = Field(default=90.0, gt=0)

    def interval(self, job: JobName) -> float:
        return float(getattr(self, f"{job}_interval_s"))

    def grace(self, kind: FindingKind) -> float:
        return float(getattr(self, f"grace_{kind}_s"))

    def action(self, kind: FindingKind) -> FindingAction:
        value: FindingAction = getattr(self, f"action_{kind}", "report")
        return value

    def kube_sources(self) -> list[str]:
        return [k.strip() for k in self.kubeconfigs.split(",") if k.strip()]

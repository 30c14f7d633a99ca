"""Watcher commands (`berth.watcher.<noun>.<verb>`), replies and event payloads.

Events (subjects `berth.events.<tenant>.<noun>.<verb>`, tenant `_system` when the owner is
unknown or the subject is a cluster) carry a `severity` (info, warning, critical) so that
the alert relay can route them without knowing each kind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from berth_shared.messages.common import ById, ListQuery, Message, Reply, ResourceId, ResourceName

PREFIX = "berth.watcher"

Severity = Literal["info", "warning", "critical"]
JobName = Literal["qos", "orphans", "reclaim", "usage"]
JOBS: tuple[JobName, ...] = ("qos", "orphans", "reclaim", "usage")
RunStatus = Literal["queued", "running", "complete", "partial", "failed"]
RunTrigger = Literal["schedule", "manual", "event"]

FindingKind = Literal[
    # A backend object (volume or snapshot) with no provisioner record.
    "backend_orphan",
    # A provisioner volume no PersistentVolume references, past its grace period.
    "volume_without_pv",
    # A PersistentVolume of Berth's driver whose volume no longer exists.
    "pv_volume_missing",
    # An attacher grant on a node where no pod uses the volume.
    "stale_attachment",
    # A single-node volume seen in use on two nodes (grants, VolumeAttachments, RBD watchers).
    "single_writer_violation",
    # A volume running at its QoS limit: who causes the load.
    "qos_saturated",
    # A cluster at or past its fill threshold, or forecast to reach it soon.
    "capacity_threshold",
]
FINDING_KINDS: tuple[FindingKind, ...] = (
    "backend_orphan",
    "volume_without_pv",
    "pv_volume_missing",
    "stale_attachment",
    "single_writer_violation",
    "qos_saturated",
    "capacity_threshold",
)
# open: seen and confirmed; acting: an action is running; quarantined: its object waits in
# the quarantine; ignored: an admin said it is fine; resolved: gone (see `resolution`).
FindingState = Literal["open", "acting", "quarantined", "ignored", "resolved"]
# What the policy does with a finding of this kind: only report it, quarantine its backend
# object (then purge it after the quarantine period), or unpublish a stale grant.
FindingAction = Literal["report", "quarantine", "unpublish"]
ResourceKind = Literal["volume", "snapshot", "pv", "attachment", "cluster"]
QuarantineState = Literal["quarantined", "restored", "purged", "failed"]


# -- runs ------------------------------------------------------------------------------------


class RunStart(Message):
    job: JobName
    # Wait up to this long for the run to finish (0: answer at once with the queued run).
    wait_s: float = Field(default=0.0, ge=0.0, le=600.0)


class SourceReport(Reply):
    """One inventory read by a run: complete, or why not (the run is then partial)."""

    name: str
    ok: bool
    items: int = 0
    pages: int = 0
    seconds: float = 0.0
    error: str | None = None


class RunAction(Reply):
    kind: str
    target: str
    outcome: Literal["done", "failed", "skipped"]
    detail: str = ""


class WatcherRun(Reply):
    id: str
    job: JobName
    trigger: RunTrigger
    status: RunStatus
    # A partial run read some source incompletely: it reports, it acts on nothing.
    partial: bool
    requested_by: str
    requested_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = None
    sources: list[SourceReport] = Field(default_factory=list)
    findings_opened: int = 0
    findings_resolved: int = 0
    findings_open: int = 0
    actions: list[RunAction] = Field(default_factory=list)
    error: str | None = None
    summary: dict[str, Any] = Field(default_factory=dict)
    # info when complete, warning when partial or failed.
    severity: Severity = "info"


class RunQuery(ListQuery):
    job: JobName | None = None


class WatcherRunList(Reply):
    items: list[WatcherRun]
    next_token: str | None = None


# -- findings -------------------------------------------------------------------------------


class Finding(Reply):
    id: str
    kind: FindingKind
    severity: Severity
    state: FindingState
    tenant: str | None = None
    cluster_id: str | None = None
    resource_kind: ResourceKind
    resource_id: str
    # What it is, in one sentence.
    summary: str
    # What to do about it.
    advice: str
    action: FindingAction
    details: dict[str, Any] = Field(default_factory=dict)
    # Since when: first seen by a complete run; confirmed once its grace period passed.
    first_seen_at: datetime
    confirmed_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None = None
    resolution: str | None = None
    run_id: str


class FindingQuery(ListQuery):
    kind: FindingKind | None = None
    state: FindingState | None = None
    cluster_id: ResourceId | None = None
    # Resolved findings are history: left out unless asked for.
    include_resolved: bool = False


class FindingList(Reply):
    items: list[Finding]
    next_token: str | None = None


class FindingIgnore(Message):
    id: ResourceId
    reason: str = Field(min_length=1, max_length=500)


# -- quarantine ----------------------------------------------------------------------------


class QuarantineEntry(Reply):
    id: str
    finding_id: str | None = None
    cluster_id: str
    backend: str
    object_kind: Literal["volume", "snapshot"]
    object_id: str
    tenant: str | None = None
    size_bytes: int = 0
    state: QuarantineState
    # warning while quarantined or failed (someone may miss the data), info otherwise.
    severity: Severity
    reason: str
    requested_by: str
    quarantined_at: datetime
    purge_after: datetime
    restored_at: datetime | None = None
    purged_at: datetime | None = None
    error: str | None = None


class QuarantineQuery(ListQuery):
    state: QuarantineState | None = None


class QuarantineList(Reply):
    items: list[QuarantineEntry]
    next_token: str | None = None


# -- QoS -----------------------------------------------------------------------------------


class QosRule(Message):
    """One limit that scales with size: clamp(base + per_gib x size, floor, ceiling)."""

    base: int = Field(default=0, strict=True, ge=0)
    per_gib: float = Field(default=0.0, ge=0.0)
    floor: int | None = Field(default=None, strict=True, ge=1)
    ceiling: int | None = Field(default=None, strict=True, ge=1)

    @model_validator(mode="after")
    def _sane(self) -> QosRule:
        if self.base == 0 and self.per_gib == 0 and self.floor is None:
            raise ValueError("a rule needs a base, a per_gib or a floor")
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise ValueError("floor must not exceed ceiling")
        return self


class _QosFields(BaseModel):
    volume_type: ResourceName
    # Totals (reads and writes together) ...
    iops: QosRule | None = None
    bps: QosRule | None = None
    # ... and per direction; give either or both, the lowest limit applies.
    read_iops: QosRule | None = None
    write_iops: QosRule | None = None
    read_bps: QosRule | None = None
    write_bps: QosRule | None = None
    # A volume whose IO reaches this share of one of its limits is running at its limit.
    saturation_pct: float = Field(default=90.0, gt=0.0, le=100.0)


class QosPolicySet(_QosFields, Message):
    @model_validator(mode="after")
    def _some_limit(self) -> QosPolicySet:
        if not any(getattr(self, k) for k in ("iops", "bps", "read_iops", "write_iops", "read_bps", "write_bps")):
            raise ValueError("give at least one limit (iops, bps, read_iops, write_iops, read_bps, write_bps)")
        return self


class QosPolicy(_QosFields, Reply):
    updated_at: datetime


class QosPolicyList(Reply):
    items: list[QosPolicy]


class QosPolicyRef(Message):
    volume_type: ResourceName


class QosVolume(Reply):
    """What the watcher wants for one volume, what the storage holds, and its load."""

    volume_id: str
    tenant: str
    cluster_id: str
    volume_type: str
    size_gib: int
    wanted: dict[str, int]
    applied: dict[str, int]
    enforced: bool
    detail: str
    # Measured over the last run's interval (None until two samples exist).
    load: dict[str, float] | None = None
    saturated: bool = False
    updated_at: datetime


class QosStatusQuery(ListQuery):
    saturated_only: bool = False


class QosStatusList(Reply):
    items: list[QosVolume]
    next_token: str | None = None


class QosDrift(Reply):
    """Limits found changed behind the watcher's back, and put back."""

    volume_id: str
    tenant: str
    cluster_id: str
    severity: Severity = "warning"
    wanted: dict[str, int]
    found: dict[str, int]
    enforced: bool
    detail: str


# -- usage and forecast ----------------------------------------------------------------------


class UsageRow(Reply):
    scope: Literal["tenant", "cluster", "volume_type"]
    key: str
    volumes: int
    provisioned_bytes: int
    used_bytes: int
    # provisioned / capacity for a cluster; provisioned / used elsewhere (thin saving).
    overcommit_ratio: float | None = None
    capacity_bytes: int | None = None
    growth_bytes_per_day: float | None = None


class UsageQuery(Message):
    scope: Literal["tenant", "cluster", "volume_type"] | None = None


class UsageReport(Reply):
    at: datetime | None
    items: list[UsageRow]


class CapacityForecast(Reply):
    cluster_id: str
    cluster_name: str
    backend: str
    capacity_bytes: int
    used_bytes: int
    provisioned_bytes: int
    fill_ratio: float
    threshold_ratio: float
    # Fit on the recorded history (least squares over the window); None: not enough history.
    growth_bytes_per_day: float | None
    # None: not growing, or not enough history; 0: at or past the threshold.
    days_until_threshold: float | None
    samples: int
    window_days: float
    severity: Severity
    at: datetime


class ForecastList(Reply):
    items: list[CapacityForecast]


# -- reclaim -------------------------------------------------------------------------------


class PvReclaimed(Reply):
    """A Released PV (reclaim policy Delete) whose volume the watcher deleted through the
    provisioner after its TTL."""

    pv_name: str
    volume_id: str
    tenant: str
    severity: Severity = "info"
    released_at: datetime
    ttl_s: float
    claim: str | None = None
    deleted_at: datetime


class Empty(Reply):
    pass


class NoArgs(Message):
    pass


COMMANDS: dict[str, tuple[type[Message], type[Reply]]] = {
    f"{PREFIX}.run.start": (RunStart, WatcherRun),
    f"{PREFIX}.run.get": (ById, WatcherRun),
    f"{PREFIX}.run.list": (RunQuery, WatcherRunList),
    f"{PREFIX}.finding.list": (FindingQuery, FindingList),
    f"{PREFIX}.finding.get": (ById, Finding),
    f"{PREFIX}.finding.ignore": (FindingIgnore, Finding),
    f"{PREFIX}.finding.quarantine": (ById, QuarantineEntry),
    f"{PREFIX}.quarantine.list": (QuarantineQuery, QuarantineList),
    f"{PREFIX}.quarantine.restore": (ById, QuarantineEntry),
    f"{PREFIX}.quarantine.purge": (ById, QuarantineEntry),
    f"{PREFIX}.qos.policy_set": (QosPolicySet, QosPolicy),
    f"{PREFIX}.qos.policy_list": (NoArgs, QosPolicyList),
    f"{PREFIX}.qos.policy_delete": (QosPolicyRef, Empty),
    f"{PREFIX}.qos.status": (QosStatusQuery, QosStatusList),
    f"{PREFIX}.usage.get": (UsageQuery, UsageReport),
    f"{PREFIX}.forecast.list": (NoArgs, ForecastList),
}

EVENTS: dict[tuple[str, str], type[Reply]] = {
    ("finding", "opened"): Finding,
    ("finding", "resolved"): Finding,
    ("quarantine", "created"): QuarantineEntry,
    ("quarantine", "restored"): QuarantineEntry,
    ("quarantine", "purged"): QuarantineEntry,
    ("qos", "drift_repaired"): QosDrift,
    ("capacity", "forecast"): CapacityForecast,
    ("pv", "reclaimed"): PvReclaimed,
    ("watcher_run", "finished"): WatcherRun,
}

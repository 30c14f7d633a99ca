"""From observations to findings (pure code): when a sighting becomes a finding, when a
finding is resolved, and what each finding says (what it is, what to do).

A sighting is confirmed once its grace period has passed, counted from the earlier of its
first sighting and the object's own age, **and** it was seen by an earlier complete run
too (a grace of 0 confirms at once). The second sighting is what rules out the race of
reading two inventories a moment apart: an object deleted in between is seen once, never
twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from berth_shared.messages.watcher import FindingAction, FindingKind
from berth_watcher.model import Observation

# States a stored finding can be resolved from when its observation goes away. A
# quarantined object is out of the inventory on purpose: it stays until restored or purged.
RESOLVABLE = frozenset({"open", "acting", "ignored"})


@dataclass(frozen=True)
class Sighting:
    key: str
    scope: str
    first_seen_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True)
class StoredFinding:
    id: str
    key: str
    scope: str
    state: str


@dataclass
class Plan:
    new_sightings: list[Observation] = field(default_factory=list)
    seen_sightings: list[str] = field(default_factory=list)
    dropped_sightings: list[str] = field(default_factory=list)
    # (observation, first seen): becomes a finding now
    confirmed: list[tuple[Observation, datetime]] = field(default_factory=list)
    # (finding id, observation): still there
    refreshed: list[tuple[str, Observation]] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)


def plan(
    observations: Iterable[Observation],
    evaluated: set[str],
    sightings: dict[str, Sighting],
    open_findings: dict[str, StoredFinding],
    now: datetime,
    grace_of: Callable[[FindingKind], float],
) -> Plan:
    out = Plan()
    seen: set[str] = set()
    for obs in observations:
        if obs.key in seen:
            continue
        seen.add(obs.key)
        finding = open_findings.get(obs.key)
        if finding is not None:
            out.refreshed.append((finding.id, obs))
            continue
        grace = timedelta(seconds=grace_of(obs.kind))
        earlier = sightings.get(obs.key)
        if grace.total_seconds() == 0:
            out.confirmed.append((obs, earlier.first_seen_at if earlier else now))
            if earlier:
                out.dropped_sightings.append(obs.key)
            continue
        if earlier is None:
            out.new_sightings.append(obs)
            continue
        start = min(earlier.first_seen_at, obs.since) if obs.since else earlier.first_seen_at
        if now - start >= grace:
            out.confirmed.append((obs, earlier.first_seen_at))
            out.dropped_sightings.append(obs.key)
        else:
            out.seen_sightings.append(obs.key)
    for key, s in sightings.items():
        if key not in seen and s.scope in evaluated:
            out.dropped_sightings.append(key)
    for key, f in open_findings.items():
        if key not in seen and f.scope in evaluated and f.state in RESOLVABLE:
            out.resolved.append(f.id)
    return out


# -- what each finding says ------------------------------------------------------------------


def describe(obs: Observation, action: FindingAction) -> tuple[str, str]:
    """(summary, advice) for a finding: what it is, and what to do about it."""
    d = obs.details
    if obs.kind == "backend_orphan":
        what = f"{d.get('object_kind', 'object')} {obs.resource_id} on cluster {obs.cluster_id}"
        if d.get("pv"):
            return (
                f"The backend holds {what} with no provisioner record, and PersistentVolume {d['pv']} "
                "still references it: the record was lost, the data was not.",
                "Never deleted automatically. Do not delete the PV. Recreate the record (or migrate the data) "
                "before anything else; see docs/watcher.md.",
            )
        recorded = d.get("recorded_on_cluster")
        tail = f" (its record says cluster {recorded})" if recorded else ""
        partial = " It is a create that never finished." if d.get("partial") else ""
        if d.get("users"):
            return (
                f"The backend holds {what} with no provisioner record{tail}, and it is in use by "
                f"{', '.join(d['users'])}.{partial}",
                "Find who uses it (a node outside Berth's control?) before anything else; it is not quarantined "
                "while in use.",
            )
        todo = (
            "The watcher quarantines it (restorable for the quarantine period, then purged)."
            if action == "quarantine"
            else "Quarantine it with `berth watcher findings quarantine <id>` (restorable), or ignore it if it is "
            "known; set BERTH_ACTION_BACKEND_ORPHAN=quarantine to do this by policy."
        )
        return f"The backend holds {what} with no provisioner record{tail}: it is leaked.{partial}", todo
    if obs.kind == "volume_without_pv":
        why = ""
        if d.get("has_snapshots"):
            why = " It has snapshots, so it is only reported."
        elif d.get("attached"):
            why = " It is attached somewhere, so it is only reported."
        return (
            f"Volume {obs.resource_id} ({d.get('size_gib')} GiB, tenant {obs.tenant}) is not referenced by any "
            f"PersistentVolume of the configured Kubernetes clusters.{why}",
            "If it was made outside Kubernetes on purpose, ignore the finding. Otherwise its PV was deleted with "
            "the Retain policy: delete the volume (`berth volumes delete`) once nobody needs its data, or "
            "quarantine it with `berth watcher findings quarantine <id>`.",
        )
    if obs.kind == "pv_volume_missing":
        return (
            f"PersistentVolume {obs.resource_id} ({d.get('phase')}, claim {d.get('claim') or '-'}) references "
            f"volume {d.get('volume_id')}, which has neither a provisioner record nor a backend object.",
            "Pods using it cannot start. Restore the volume from a snapshot or backup, or delete the PV and its "
            "claim once the data is known to be gone. Berth never touches PVs.",
        )
    if obs.kind == "stale_attachment":
        node = d.get("node_id")
        where = "" if d.get("node_in_kubernetes") else " (a node Kubernetes no longer knows)"
        if d.get("volume_attachment"):
            todo = (
                f"Kubernetes still has a VolumeAttachment for {d.get('pv')} on {node}: check the attach-detach "
                "controller and the CSI external-attacher; the grant goes with the VolumeAttachment."
            )
        elif action == "unpublish":
            todo = "The watcher unpublishes the grant (the attacher's unpublish; the data is untouched)."
        else:
            todo = (
                f"Unpublish it (`berth watcher` policy BERTH_ACTION_STALE_ATTACHMENT=unpublish, or the attacher's "
                f"unpublish for volume {d.get('volume_id')} on {node}) so the volume can move."
            )
        return (
            f"Volume {d.get('volume_id')} is granted to node {node}{where}, but no pod there uses claim "
            f"{d.get('claim') or '-'}.",
            todo,
        )
    if obs.kind == "single_writer_violation":
        return (
            f"Single-node volume {obs.resource_id} is in use for writing on {', '.join(d.get('writers', []))} at "
            f"once (seen in {d.get('seen_in')}).",
            "Risk of file-system corruption: fence the node that should not have it (`berth` attacher fence), "
            "check the volume's file system, and report this as a bug.",
        )
    if obs.kind == "qos_saturated":
        return (
            f"Volume {obs.resource_id} (tenant {obs.tenant}) runs at its IO limit: {d.get('at_limit')}.",
            "This is who causes the load. If it is expected, raise the type's QoS policy or move the volume to a "
            "faster type (a VolumeAttributesClass change); otherwise look at the workload.",
        )
    # capacity_threshold
    days = d.get("days_until_threshold")
    # Critical means at or past it (decided on the exact figures; the ones shown are rounded).
    when = "is past" if obs.severity == "critical" else f"reaches it in {days} days at"
    return (
        f"Cluster {obs.resource_id} {when} its fill threshold ({d.get('fill_pct')} % used, threshold "
        f"{d.get('threshold_pct')} %).",
        "Add a cluster (new volumes go there at once) or set this one to draining; nothing is rebalanced.",
    )

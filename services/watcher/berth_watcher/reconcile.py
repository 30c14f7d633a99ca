"""Orphan detection: compare the inventories and say what does not add up (pure code).

Each finding kind needs certain sources read to their end; a kind is decided only for the
scopes ("evaluated") whose sources were complete, so an incomplete source never makes a
finding appear nor disappear. Everything is dict and set lookups: linear in the inventory.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from berth_shared.messages.attacher import SINGLE_NODE_MODES
from berth_watcher.model import Inventory, Observation, Pv

ACTIVE_POD_PHASES = frozenset({"Pending", "Running", "Unknown"})
SINGLE_NODE_PV_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})
SETTLED_VOLUME_STATES = frozenset({"available", "error"})


@dataclass
class Reconciled:
    observations: list[Observation] = field(default_factory=list)
    # Scopes decided in this run: a stored finding of such a scope that was not observed
    # again is gone.
    evaluated: set[str] = field(default_factory=set)


def backend_scope(cluster_id: str) -> str:
    return f"backend_orphan:{cluster_id}"


def _ip(address: str) -> str | None:
    """The host of a Ceph client address (`ip:port/nonce`); None for other users (loop devices)."""
    if "/" not in address or ":" not in address:
        return None
    return address.rsplit("/", 1)[0].rsplit(":", 1)[0].strip("[]")


def reconcile(inv: Inventory, driver: str) -> Reconciled:
    out = Reconciled()
    kube = inv.kube if inv.kube is not None and inv.kube.complete else None
    berth_pvs = [pv for pv in kube.pvs if pv.driver == driver] if kube else []
    pv_by_handle: dict[str, Pv] = {pv.volume_handle: pv for pv in berth_pvs}
    _backend_orphans(inv, kube is not None or inv.kube is None, pv_by_handle, out)
    if kube is not None and inv.volumes is not None:
        _volumes_without_pv(inv, pv_by_handle, out)
        _pvs_without_volume(inv, berth_pvs, out)
        if inv.attachments is not None:
            _stale_attachments(inv, pv_by_handle, out)
    _single_writer(inv, kube is not None, pv_by_handle, out)
    return out


def _backend_orphans(inv: Inventory, pvs_known: bool, pv_by_handle: dict[str, Pv], out: Reconciled) -> None:
    """Backend objects with no provisioner record (or one on another cluster)."""
    if inv.volumes is None:
        return
    volume_cluster = {v.id: v.cluster_id for v in inv.volumes}
    snapshot_cluster = {s.id: s.cluster_id for s in inv.snapshots} if inv.snapshots is not None else None
    for cluster_id, objects in inv.backend.items():
        if objects is None:
            continue
        if snapshot_cluster is None and any(o.kind == "snapshot" for o in objects):
            continue  # cannot tell this cluster's snapshots apart: decide nothing for it
        out.evaluated.add(backend_scope(cluster_id))
        for o in objects:
            owners = volume_cluster if o.kind == "volume" else snapshot_cluster
            assert owners is not None
            recorded_on = owners.get(o.id)
            if recorded_on == cluster_id:
                continue
            pv = pv_by_handle.get(o.id) if o.kind == "volume" else None
            details: dict[str, object] = {
                "object_kind": o.kind,
                "size_bytes": o.size_bytes,
                "used_bytes": o.used_bytes,
                "users": list(o.users),
                "partial": o.partial,
            }
            if recorded_on is not None:
                details["recorded_on_cluster"] = recorded_on
            if pv is not None:
                details["pv"] = pv.name
                details["pv_phase"] = pv.phase
            out.observations.append(
                Observation(
                    kind="backend_orphan",
                    key=f"backend_orphan:{cluster_id}:{o.kind}:{o.id}",
                    scope=backend_scope(cluster_id),
                    # A PV still references it: a record was lost, not a leak.
                    severity="critical" if pv is not None else "warning",
                    resource_kind="volume" if o.kind == "volume" else "snapshot",
                    resource_id=o.id,
                    tenant=o.tenant,
                    cluster_id=cluster_id,
                    since=o.created_at,
                    # Nothing a PV references is touched; nor what is in use; and without
                    # a complete view of the PVs, nothing at all.
                    actionable=pvs_known and pv is None and not o.users,
                    details=details,
                )
            )


def _volumes_without_pv(inv: Inventory, pv_by_handle: dict[str, Pv], out: Reconciled) -> None:
    assert inv.volumes is not None
    out.evaluated.add("volume_without_pv")
    snapshotted = {s.volume_id for s in inv.snapshots} if inv.snapshots is not None else None
    attached = {a.volume_id for a in inv.attachments} if inv.attachments is not None else None
    for v in inv.volumes:
        if v.status not in SETTLED_VOLUME_STATES or v.id in pv_by_handle:
            continue
        has_snapshots = snapshotted is None or v.id in snapshotted
        in_use = attached is None or v.id in attached
        out.observations.append(
            Observation(
                kind="volume_without_pv",
                key=f"volume_without_pv:{v.id}",
                scope="volume_without_pv",
                severity="info",
                resource_kind="volume",
                resource_id=v.id,
                tenant=v.tenant,
                cluster_id=v.cluster_id,
                since=v.created_at,
                # A volume with snapshots or a grant is someone's: only reported.
                actionable=not has_snapshots and not in_use,
                details={
                    "size_gib": v.size_gib,
                    "volume_type": v.volume_type,
                    "status": v.status,
                    "has_snapshots": has_snapshots,
                    "attached": in_use,
                },
            )
        )


def _pvs_without_volume(inv: Inventory, berth_pvs: list[Pv], out: Reconciled) -> None:
    """PVs whose volume has neither a record nor a backend object left."""
    assert inv.volumes is not None
    if any(objects is None for objects in inv.backend.values()):
        return  # the volume may be on the cluster that could not be scanned
    out.evaluated.add("pv_volume_missing")
    recorded = {v.id for v in inv.volumes}
    in_backend = {o.id for objects in inv.backend.values() if objects for o in objects if o.kind == "volume"}
    for pv in berth_pvs:
        if pv.volume_handle in recorded or pv.volume_handle in in_backend:
            continue
        out.observations.append(
            Observation(
                kind="pv_volume_missing",
                key=f"pv_volume_missing:{pv.kube}:{pv.name}",
                scope="pv_volume_missing",
                severity="critical" if pv.phase == "Bound" else "warning",
                resource_kind="pv",
                resource_id=pv.name,
                since=pv.created_at,
                details={
                    "kube": pv.kube,
                    "volume_id": pv.volume_handle,
                    "phase": pv.phase,
                    "claim": pv.claim,
                    "reclaim_policy": pv.reclaim_policy,
                },
            )
        )


def _stale_attachments(inv: Inventory, pv_by_handle: dict[str, Pv], out: Reconciled) -> None:
    assert inv.attachments is not None and inv.kube is not None
    out.evaluated.add("stale_attachment")
    # (kube, PV name) -> nodes with a live pod using it, through its claim's binding
    using: dict[tuple[str, str], set[str]] = defaultdict(set)
    for pod in inv.kube.pods:
        if pod.node and pod.phase in ACTIVE_POD_PHASES:
            for claim in pod.claims:
                pv_name = inv.kube.claims.get((pod.kube, claim))
                if pv_name:
                    using[pod.kube, pv_name].add(pod.node)
    attached_vas = {(va.kube, va.pv_name, va.node) for va in inv.kube.attachments if va.pv_name}
    for a in inv.attachments:
        if a.state != "attached":
            continue
        pv = pv_by_handle.get(a.volume_id)
        if pv is None:
            continue  # not a Kubernetes volume: nothing here says who uses it
        if a.node_id in using.get((pv.kube, pv.name), ()):
            continue
        has_va = (pv.kube, pv.name, a.node_id) in attached_vas
        node_known = (pv.kube, a.node_id) in inv.kube.nodes
        out.observations.append(
            Observation(
                kind="stale_attachment",
                key=f"stale_attachment:{a.volume_id}:{a.node_id}",
                scope="stale_attachment",
                severity="warning",
                resource_kind="attachment",
                resource_id=a.id,
                tenant=a.tenant,
                since=a.created_at,
                # Kubernetes still counts it attached (a VolumeAttachment): its controller
                # must let go first, or a pod there would find its volume gone.
                actionable=not has_va,
                details={
                    "volume_id": a.volume_id,
                    "node_id": a.node_id,
                    "pv": pv.name,
                    "claim": pv.claim,
                    "volume_attachment": has_va,
                    "node_in_kubernetes": node_known,
                    "access_mode": a.access_mode,
                },
            )
        )


def _single_writer(inv: Inventory, kube_complete: bool, pv_by_handle: dict[str, Pv], out: Reconciled) -> None:
    tenants: dict[str, str] = {}
    single: set[str] = set()
    if inv.attachments is not None:
        out.evaluated.add("single_writer_violation:grants")
        writers: dict[str, set[str]] = defaultdict(set)
        for a in inv.attachments:
            tenants[a.volume_id] = a.tenant
            if a.access_mode in SINGLE_NODE_MODES:
                single.add(a.volume_id)
                if a.state == "attached" and not a.readonly:
                    writers[a.volume_id].add(a.node_id)
        for volume_id, nodes in writers.items():
            if len(nodes) > 1:
                out.observations.append(_violation(volume_id, "grants", tenants.get(volume_id), sorted(nodes)))
    if kube_complete and inv.kube is not None:
        out.evaluated.add("single_writer_violation:kubernetes")
        by_pv = {(pv.kube, pv.name): pv for pv in pv_by_handle.values()}
        nodes_of: dict[tuple[str, str], set[str]] = defaultdict(set)
        for va in inv.kube.attachments:
            if va.attached and va.pv_name and (va.kube, va.pv_name) in by_pv:
                nodes_of[va.kube, va.pv_name].add(va.node)
        for key, nodes in nodes_of.items():
            pv = by_pv[key]
            if len(nodes) > 1 and set(pv.access_modes) <= SINGLE_NODE_PV_MODES:
                out.observations.append(
                    _violation(pv.volume_handle, "kubernetes", tenants.get(pv.volume_handle), sorted(nodes))
                )
    if inv.attachments is not None:
        for cluster_id, objects in inv.backend.items():
            if objects is None:
                continue
            out.evaluated.add(f"single_writer_violation:backend:{cluster_id}")
            for o in objects:
                if o.kind != "volume" or len(o.users) < 2 or o.id not in single:
                    continue
                hosts = {ip for ip in (_ip(u) for u in o.users) if ip}
                if len(hosts) > 1:
                    obs = _violation(o.id, f"backend:{cluster_id}", tenants.get(o.id), sorted(o.users))
                    out.observations.append(obs)


def _violation(volume_id: str, seen_in: str, tenant: str | None, where: list[str]) -> Observation:
    return Observation(
        kind="single_writer_violation",
        key=f"single_writer_violation:{seen_in}:{volume_id}",
        scope=f"single_writer_violation:{seen_in}",
        severity="critical",
        resource_kind="volume",
        resource_id=volume_id,
        tenant=tenant,
        details={"seen_in": seen_in, "writers": where},
    )

"""The watcher's decisions as pure code: what is an orphan, when a sighting becomes a
finding, the size-scaled QoS limits and load, the usage figures and forecast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from berth_shared.backends import IoCounters, QosLimits
from berth_shared.messages.watcher import QosPolicySet, QosRule
from berth_watcher import qos, usage
from berth_watcher.findings import Sighting, StoredFinding, describe, plan
from berth_watcher.jobs.reclaim import due
from berth_watcher.model import Attachment, BackendObject, Inventory, KubeView, Pod, Pv, Volume, VolumeAttachment
from berth_watcher.reconcile import reconcile

T0 = datetime(2026, 1, 1, tzinfo=UTC)
D = "csi.berth.dev"
GIB = 1 << 30


def vol(vid: str, status: str = "available", cluster: str = "cl") -> Volume:
    return Volume(vid, "ta", cluster, 10, "ssd", status, T0)


def obj(oid: str, kind: str = "volume", users: tuple[str, ...] = (), cluster: str = "cl") -> BackendObject:
    return BackendObject(cluster, kind, oid, 10 * GIB, GIB, T0 - timedelta(days=1), None, users)


def pv(name: str, handle: str, claim: str | None = "ns/c", phase: str = "Bound") -> Pv:
    return Pv("k", name, f"uid-{name}", D, handle, phase, "Delete", claim, ("ReadWriteOnce",), T0, T0)


def grant(vid: str, node: str, mode: str = "single_node_writer", readonly: bool = False) -> Attachment:
    return Attachment(f"att-{vid}-{node}", vid, "ta", node, mode, readonly, "attached", T0)


def kinds(inv: Inventory) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for o in reconcile(inv, D).observations:
        out.setdefault(o.kind, set()).add(o.resource_id)
    return out


def test_backend_orphans_and_what_protects_them() -> None:
    kube = KubeView(complete=True, pvs=[pv("pv-lost", "vol-lost")])
    inv = Inventory(
        volumes=[vol("vol-1"), vol("vol-moved", cluster="other")],
        snapshots=[],
        attachments=[],
        backend={
            "cl": [
                obj("vol-1"),
                obj("vol-leak"),
                obj("vol-lost"),
                obj("vol-used", users=("/dev/loop3",)),
                obj("vol-moved"),
            ]
        },
        kube=kube,
    )
    rec = reconcile(inv, D)
    by_id = {o.resource_id: o for o in rec.observations if o.kind == "backend_orphan"}
    assert set(by_id) == {"vol-leak", "vol-lost", "vol-used", "vol-moved"}
    assert by_id["vol-leak"].actionable
    assert not by_id["vol-lost"].actionable and by_id["vol-lost"].severity == "critical", "a PV references it"
    assert not by_id["vol-used"].actionable, "in use"
    assert by_id["vol-moved"].details["recorded_on_cluster"] == "other"
    assert "backend_orphan:cl" in rec.evaluated


def test_incomplete_sources_decide_nothing() -> None:
    inv = Inventory(volumes=None, snapshots=[], attachments=None, backend={"cl": [obj("vol-leak")]}, kube=None)
    rec = reconcile(inv, D)
    assert rec.observations == [] and rec.evaluated == set()
    # A cluster that could not be scanned: nothing said about it, the others still decided.
    inv = Inventory([vol("vol-1")], [], [], {"cl": None, "c2": [obj("vol-x", cluster="c2")]}, None)
    rec = reconcile(inv, D)
    assert {o.resource_id for o in rec.observations} == {"vol-x"}
    assert "backend_orphan:cl" not in rec.evaluated and "backend_orphan:c2" in rec.evaluated
    # Kubernetes configured but incomplete: no PV-based kind, and backend orphans are not actionable.
    inv = Inventory([vol("vol-1")], [], [], {"cl": [obj("vol-leak")]}, KubeView(complete=False))
    rec = reconcile(inv, D)
    assert {o.kind for o in rec.observations} == {"backend_orphan"}
    assert not rec.observations[0].actionable
    assert "volume_without_pv" not in rec.evaluated


def test_snapshot_orphans_need_the_snapshot_records() -> None:
    inv = Inventory([vol("vol-1")], None, None, {"cl": [obj("vol-1"), obj("snap-x", kind="snapshot")]}, None)
    assert reconcile(inv, D).evaluated == set()
    inv.snapshots = []
    assert kinds(inv) == {"backend_orphan": {"snap-x"}}


def test_pv_and_volume_without_each_other() -> None:
    kube = KubeView(complete=True, pvs=[pv("pv-1", "vol-1"), pv("pv-gone", "vol-gone"), pv("pv-nfs", "x")])
    kube.pvs[2] = Pv("k", "pv-nfs", "u", "nfs.csi.k8s.io", "x", "Bound", "Retain", None, (), T0, T0)
    inv = Inventory(
        [vol("vol-1"), vol("vol-nopv"), vol("vol-creating", "creating")], [], [], {"cl": [obj("vol-1")]}, kube
    )
    found = kinds(inv)
    assert found["volume_without_pv"] == {"vol-nopv"}, "in-flight volumes are not judged"
    assert found["pv_volume_missing"] == {"pv-gone"}, "other drivers' PVs are not ours"
    # A PV whose volume lost its record but not its data is a backend orphan, not a missing volume.
    inv.backend["cl"] = [obj("vol-1"), obj("vol-gone")]
    found = kinds(inv)
    assert "pv_volume_missing" not in found and found["backend_orphan"] == {"vol-gone"}


def test_stale_attachments() -> None:
    kube = KubeView(
        complete=True,
        pvs=[pv("pv-a", "vol-a", "ns/a"), pv("pv-b", "vol-b", "ns/b"), pv("pv-c", "vol-c", "ns/c")],
        pods=[Pod("k", "ns", "p-a", "n1", "Running", ("ns/a",)), Pod("k", "ns", "p-b", "n2", "Succeeded", ("ns/b",))],
        attachments=[VolumeAttachment("k", "va-c", D, "pv-c", "n3", True)],
        nodes={("k", "n1"), ("k", "n2"), ("k", "n3")},
        claims={("k", "ns/a"): "pv-a", ("k", "ns/b"): "pv-b", ("k", "ns/c"): "pv-c"},
    )
    inv = Inventory(
        [vol("vol-a"), vol("vol-b"), vol("vol-c"), vol("vol-x")],
        [],
        [grant("vol-a", "n1"), grant("vol-b", "n2"), grant("vol-c", "n3"), grant("vol-x", "n9")],
        {"cl": [obj("vol-a"), obj("vol-b"), obj("vol-c"), obj("vol-x")]},
        kube,
    )
    stale = {o.details["volume_id"]: o for o in reconcile(inv, D).observations if o.kind == "stale_attachment"}
    assert set(stale) == {"vol-b", "vol-c"}, "a used grant and a non-Kubernetes volume are left alone"
    assert stale["vol-b"].actionable
    assert not stale["vol-c"].actionable, "Kubernetes still holds a VolumeAttachment"


def test_single_writer_violations() -> None:

    def ip(a: str) -> str:
        return f"{a}:0/1"

    inv = Inventory(
        [vol("vol-1"), vol("vol-2"), vol("vol-3")],
        [],
        [
            grant("vol-1", "n1"),
            grant("vol-1", "n2"),
            grant("vol-2", "n1", "multi_node_multi_writer"),
            grant("vol-2", "n2", "multi_node_multi_writer"),
            grant("vol-3", "n1"),
            grant("vol-3", "n2", readonly=True),
        ],
        {"cl": [obj("vol-1"), obj("vol-2"), obj("vol-3", users=(ip("10.0.0.1"), ip("10.0.0.2")))]},
        None,
    )
    seen = {(o.resource_id, o.details["seen_in"]) for o in reconcile(inv, D).observations}
    assert seen == {("vol-1", "grants"), ("vol-3", "backend:cl")}


def test_findings_need_a_second_sighting_and_their_grace() -> None:
    inv = Inventory([vol("vol-1")], [], [], {"cl": [obj("vol-leak")]}, None)
    rec = reconcile(inv, D)
    grace = {"backend_orphan": 120.0}.__getitem__
    first = plan(rec.observations, rec.evaluated, {}, {}, T0, grace)
    assert [o.key for o in first.new_sightings] == ["backend_orphan:cl:volume:vol-leak"] and not first.confirmed
    seen = {o.key: Sighting(o.key, o.scope, T0, T0) for o in first.new_sightings}
    # The object is old: the second sighting confirms at once, whatever the grace.
    second = plan(rec.observations, rec.evaluated, seen, {}, T0 + timedelta(seconds=60), grace)
    assert [o.key for o, _ in second.confirmed] == ["backend_orphan:cl:volume:vol-leak"]
    # A young object waits for its grace.
    young = Inventory([], [], [], {"cl": [BackendObject("cl", "volume", "v2", 1, 0, T0 + timedelta(seconds=50))]}, None)
    rec = reconcile(young, D)
    seen = {o.key: Sighting(o.key, o.scope, T0 + timedelta(seconds=55), T0) for o in rec.observations}
    assert not plan(rec.observations, rec.evaluated, seen, {}, T0 + timedelta(seconds=100), grace).confirmed
    assert plan(rec.observations, rec.evaluated, seen, {}, T0 + timedelta(seconds=180), grace).confirmed


def test_findings_resolve_only_in_their_evaluated_scope() -> None:
    stored = {
        "k1": StoredFinding("f1", "k1", "backend_orphan:cl", "open"),
        "k2": StoredFinding("f2", "k2", "backend_orphan:other", "open"),
        "k3": StoredFinding("f3", "k3", "backend_orphan:cl", "quarantined"),
    }
    out = plan([], {"backend_orphan:cl"}, {}, stored, T0, lambda _k: 0.0)
    assert out.resolved == ["f1"], "an unread scope and a quarantined object stay as they are"


def test_every_kind_says_what_and_what_to_do() -> None:
    inv = Inventory([vol("vol-1")], [], [grant("vol-1", "n1"), grant("vol-1", "n2")], {"cl": [obj("vol-x")]}, None)
    for o in reconcile(inv, D).observations:
        summary, advice = describe(o, "report")
        assert o.resource_id in summary and advice


def test_qos_limits_scale_with_size() -> None:
    policy = QosPolicySet(
        volume_type="ssd",
        iops=QosRule(base=100, per_gib=10, floor=200, ceiling=5000),
        write_bps=QosRule(per_gib=1_000_000, ceiling=500_000_000),
    )
    assert qos.limits_for(policy, 1) == QosLimits(iops=200, write_bps=1_000_000)  # the floor
    assert qos.limits_for(policy, 100) == QosLimits(iops=1100, write_bps=100_000_000)
    assert qos.limits_for(policy, 10_000) == QosLimits(iops=5000, write_bps=500_000_000)  # the ceilings
    assert qos.limits_for(None, 100) == QosLimits()
    with pytest.raises(ValueError):
        QosRule(floor=10, ceiling=5)
    with pytest.raises(ValueError):
        QosPolicySet(volume_type="ssd")


def test_load_and_saturation() -> None:
    a = qos.Sample(T0, IoCounters(0, 0, 0, 0, "loop1"))
    b = qos.Sample(T0 + timedelta(seconds=10), IoCounters(100, 5000, 0, 50 << 20, "loop1"))
    rates = qos.load(a, b)
    assert rates is not None and rates["write_iops"] == 500 and rates["iops"] == 510
    assert qos.at_limit(rates, QosLimits(write_iops=520), 90.0) == {"write_iops": "500 / 520"}
    assert qos.at_limit(rates, QosLimits(write_iops=1000), 90.0) == {}
    assert qos.load(a, qos.Sample(b.at, IoCounters(1, 1, 1, 1, "loop2"))) is None, "another device"
    assert qos.load(b, qos.Sample(b.at + timedelta(seconds=1), IoCounters(0, 0, 0, 0, "loop1"))) is None, "a reset"
    assert qos.Sample.from_json(b.to_json()) == b


def test_usage_and_forecast() -> None:
    rows = usage.aggregate([vol("v1"), Volume("v2", "tb", "cl", 30, "hdd", "available", T0)], [obj("v1"), obj("v2")])
    by = {(r.scope, r.key): r for r in rows}
    assert by["cluster", "cl"].provisioned_bytes == 40 * GIB and by["cluster", "cl"].used_bytes == 2 * GIB
    assert by["tenant", "tb"].volumes == 1 and by["volume_type", "ssd"].provisioned_bytes == 10 * GIB
    assert usage.thin_ratio(by["cluster", "cl"], 20 * GIB) == 2.0
    points = [(T0 + timedelta(days=d), int(d * GIB)) for d in range(5)]
    growth = usage.growth_per_day(points)
    assert growth == pytest.approx(GIB)
    assert usage.days_until(100 * GIB, 10 * GIB, 0.85, growth) == pytest.approx(75.0)
    assert usage.days_until(100 * GIB, 90 * GIB, 0.85, growth) == 0.0
    assert usage.days_until(100 * GIB, 10 * GIB, 0.85, -5.0) is None
    assert usage.growth_per_day(points[:2]) is None, "too little history: no guess"
    assert usage.severity(0.9, 0.85, 0.0, 14) == "critical"
    assert usage.severity(0.5, 0.85, 10.0, 14) == "warning"
    assert usage.severity(0.5, 0.85, None, 14) == "info"


def test_reclaim_waits_for_the_ttl_and_only_takes_released_delete_pvs() -> None:
    released = Pv("k", "pv-r", "u", D, "v", "Released", "Delete", None, (), T0, T0)
    kept = Pv("k", "pv-k", "u", D, "v", "Released", "Retain", None, (), T0, T0)
    unknown = Pv("k", "pv-u", "u", D, "v", "Released", "Delete", None, (), T0, None)
    bound = Pv("k", "pv-b", "u", D, "v", "Bound", "Delete", None, (), T0, T0)
    pvs = [released, kept, unknown, bound]
    assert due(pvs, D, 3600, T0 + timedelta(seconds=3599)) == []
    assert due(pvs, D, 3600, T0 + timedelta(seconds=3600)) == [released]

"""Placement is pure: these are unit tests of its filter (reject_reason) and weighing (rank)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from berth_provisioner.placement import ClusterView, NoValidCluster, PlacementRequest, Rejection, rank, reject_reason

BASE = ClusterView(
    id="cl-1",
    name="one",
    volume_types=("standard", "ssd"),
    zone="z1",
    state="active",
    capacity_gib=100,
    overcommit_ratio=2.0,
    provisioned_gib=0,
    free_floor_pct=5.0,
    allowed_tenants=None,
)
REQ = PlacementRequest(tenant="acme", size_gib=10, volume_type="standard", zone=None)


def cluster(name: str, **changes: Any) -> ClusterView:
    return replace(BASE, id=f"cl-{name}", name=name, **changes)


def test_a_plain_cluster_takes_a_plain_volume() -> None:
    assert reject_reason(BASE, REQ) is None
    assert rank([BASE], REQ) == [BASE]


@pytest.mark.parametrize(
    ("changes", "request_changes", "why"),
    [
        ({"state": "draining"}, {}, "cluster is draining"),
        ({"state": "readonly"}, {}, "cluster is readonly"),
        ({}, {"volume_type": "gold"}, "does not serve volume type gold"),
        ({}, {"zone": "z2"}, "in zone z1, not z2"),
        ({"allowed_tenants": ("other",)}, {}, "tenant not allowed"),
        ({"allowed_tenants": ()}, {}, "tenant not allowed"),
        ({"provisioned_gib": 191}, {}, "over its overcommit limit (191+10 > 200 GiB)"),
        ({}, {"size_gib": 201}, "over its overcommit limit (0+201 > 200 GiB)"),
        ({"backend_free_fraction": 0.04}, {}, "backend free space under the 5% floor"),
    ],
)
def test_each_filter_rejects_with_its_reason(
    changes: dict[str, Any], request_changes: dict[str, Any], why: str
) -> None:
    c = replace(BASE, **changes)
    req = replace(REQ, **request_changes)
    assert reject_reason(c, req) == why
    with pytest.raises(NoValidCluster) as exc:
        rank([c], req)
    assert exc.value.rejections == [Rejection("one", why)]
    assert why in str(exc.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"provisioned_gib": 190},  # exactly at the overcommit limit
        {"zone": "z1"},
        {"allowed_tenants": ("acme", "other")},
        {"backend_free_fraction": 0.05},  # exactly at the floor
        {"backend_free_fraction": None},  # unknown free space does not block
    ],
)
def test_boundaries_that_still_fit(changes: dict[str, Any]) -> None:
    c = replace(BASE, **changes)
    assert reject_reason(c, replace(REQ, zone="z1")) is None


def test_no_clusters_at_all() -> None:
    with pytest.raises(NoValidCluster) as exc:
        rank([], REQ)
    assert exc.value.rejections == []
    assert "no clusters registered" in str(exc.value)


def test_every_rejection_is_reported() -> None:
    a = cluster("a", state="draining")
    b = cluster("b", zone="z9")
    with pytest.raises(NoValidCluster) as exc:
        rank([a, b], replace(REQ, zone="z1"))
    assert [r.cluster for r in exc.value.rejections] == ["a", "b"]


def test_a_freshly_added_cluster_takes_new_volumes_at_once() -> None:
    old = cluster("old", capacity_gib=1000, provisioned_gib=600)
    new = cluster("new", capacity_gib=100, provisioned_gib=0)
    assert [c.name for c in rank([old, new], REQ)] == ["new", "old"]


def test_emptier_cluster_first_relative_to_its_limit() -> None:
    # Fill is relative to each limit: 50 of 200 GiB (25%) loses to 100 of 1000 GiB (10%).
    small = cluster("small", capacity_gib=100, provisioned_gib=50)
    big = cluster("big", capacity_gib=500, provisioned_gib=100)
    assert [c.name for c in rank([small, big], REQ)] == ["big", "small"]


def test_real_free_space_counts() -> None:
    full_disk = cluster("full-disk", backend_free_fraction=0.10)
    empty_disk = cluster("empty-disk", backend_free_fraction=0.90)
    assert [c.name for c in rank([full_disk, empty_disk], REQ)] == ["empty-disk", "full-disk"]


def test_recent_load_spreads_a_burst() -> None:
    busy = cluster("busy", recent_creates=50)
    idle = cluster("idle", recent_creates=0)
    assert [c.name for c in rank([busy, idle], REQ)] == ["idle", "busy"]


def test_ties_break_by_name_so_placement_is_deterministic() -> None:
    b, a = cluster("b"), cluster("a")
    assert [c.name for c in rank([b, a], REQ)] == ["a", "b"]
    assert [c.name for c in rank([a, b], REQ)] == ["a", "b"]


def test_rejected_clusters_are_left_out_of_the_ranking() -> None:
    ok = cluster("ok", provisioned_gib=150)
    draining = cluster("draining", state="draining")
    wrong_type = cluster("wrong-type", volume_types=("ssd",))
    assert rank([draining, ok, wrong_type], REQ) == [ok]


def test_limit_is_capacity_times_overcommit() -> None:
    assert cluster("x", capacity_gib=100, overcommit_ratio=1.5).limit_gib == 150

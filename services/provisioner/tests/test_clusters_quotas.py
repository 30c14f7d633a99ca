"""Storage clusters (register, list, drain, restrict, zones), volume types and quotas,
through the admin API, with placement observed on real file clusters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from provisioner_checks import (
    VOLUMES,
    assert_problem,
    create_volume,
    files_under,
    local_cluster,
    set_quota,
    whole_state,
)
from provisioner_harness import Provisioner

CLUSTERS = "/v1/clusters"


def _cluster_body(root: Path, name: str = "c2", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "file",
        "config": {"root": str(root)},
        "volume_types": ["standard"],
        "capacity_gib": 100,
        **extra,
    }


async def _register(prov: Provisioner, body: dict[str, Any]) -> dict[str, Any]:
    r = await prov.http.post(CLUSTERS, json=body, headers=prov.auth(prov.tenants.admin))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _patch(prov: Provisioner, cluster_id: str, **changes: Any) -> dict[str, Any]:
    r = await prov.http.patch(f"{CLUSTERS}/{cluster_id}", json=changes, headers=prov.auth(prov.tenants.admin))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _clusters(prov: Provisioner) -> dict[str, dict[str, Any]]:
    r = await prov.http.get(CLUSTERS, headers=prov.auth(prov.tenants.admin))
    assert r.status_code == 200, r.text
    return {c["name"]: c for c in r.json()["items"]}


async def test_a_new_cluster_takes_new_volumes_at_once(prov: Provisioner, tmp_path: Path) -> None:
    # A small local cluster, 20% full: clearly fuller than an empty newcomer (the weighing
    # also counts real free space, which both share here, so the fill must dominate).
    local = await _patch(prov, (await local_cluster(prov))["id"], capacity_gib=5, overcommit_ratio=1.0)
    first = await create_volume(prov, prov.tenants.a, "before", 1)
    assert first["cluster_id"] == local["id"]

    c2 = await _register(prov, _cluster_body(tmp_path / "c2", overcommit_ratio=2.0))
    assert (c2["state"], c2["provisioned_gib"], c2["volume_count"]) == ("active", 0, 0)
    assert "config" not in c2, "backend config (paths, credentials) stays inside the provisioner"

    second = await create_volume(prov, prov.tenants.a, "after", 3)
    assert second["cluster_id"] == c2["id"]
    assert files_under(tmp_path / "c2") == [f"volumes/{second['id']}.img"]
    assert (tmp_path / "c2" / "volumes" / f"{second['id']}.img").stat().st_size == 3 * 1024**3

    listed = await _clusters(prov)
    assert (listed["local"]["provisioned_gib"], listed["local"]["volume_count"]) == (1, 1)
    assert (listed["c2"]["provisioned_gib"], listed["c2"]["volume_count"]) == (3, 1)
    assert listed["c2"]["backend_total_bytes"] > 0 and listed["c2"]["backend_free_bytes"] > 0

    # Deleting gives the room back on the cluster that held the volume.
    r = await prov.http.delete(f"{VOLUMES}/{second['id']}", headers=prov.auth(prov.tenants.a))
    assert r.status_code == 204
    listed = await _clusters(prov)
    assert (listed["c2"]["provisioned_gib"], listed["c2"]["volume_count"]) == (0, 0)
    assert files_under(tmp_path / "c2" / "volumes") == []


@pytest.mark.parametrize("state", ["draining", "readonly"])
async def test_draining_and_readonly_clusters_take_no_new_volumes(
    prov: Provisioner, tmp_path: Path, state: str
) -> None:
    local = await local_cluster(prov)
    c2 = await _register(prov, _cluster_body(tmp_path / "c2"))
    await _patch(prov, local["id"], state="draining")
    on_c2 = await create_volume(prov, prov.tenants.a, "on-c2")
    assert on_c2["cluster_id"] == c2["id"]

    await _patch(prov, local["id"], state="active")
    assert (await _patch(prov, c2["id"], state=state))["state"] == state
    for i in range(3):
        assert (await create_volume(prov, prov.tenants.a, f"elsewhere-{i}"))["cluster_id"] == local["id"]

    await _patch(prov, local["id"], state="draining")
    before = await whole_state(prov)
    r = await prov.http.post(
        VOLUMES, json={"name": "nowhere", "size_gib": 1, "volume_type": "standard"}, headers=prov.auth(prov.tenants.a)
    )
    body = assert_problem(r, 409, "resource_exhausted", "no_valid_cluster")
    assert sorted(body["rejections"], key=lambda x: x["cluster"]) == [
        {"cluster": "c2", "reason": f"cluster is {state}"},
        {"cluster": "local", "reason": "cluster is draining"},
    ]
    assert await whole_state(prov) == before

    # The volumes already there stay usable and can leave.
    r = await prov.http.delete(f"{VOLUMES}/{on_c2['id']}", headers=prov.auth(prov.tenants.a))
    assert r.status_code == 204, r.text
    assert (await _clusters(prov))["c2"]["volume_count"] == 0

    # Back to active (and the only active one): it takes volumes again.
    await _patch(prov, c2["id"], state="active")
    assert (await create_volume(prov, prov.tenants.a, "again"))["cluster_id"] == c2["id"]


async def test_allowed_tenants_restrict_a_cluster(prov: Provisioner, tmp_path: Path) -> None:
    c2 = await _register(prov, _cluster_body(tmp_path / "c2", allowed_tenants=[prov.tenants.tenant_a]))
    await _patch(prov, (await local_cluster(prov))["id"], state="draining")
    assert (await create_volume(prov, prov.tenants.a, "mine"))["cluster_id"] == c2["id"]
    before = await whole_state(prov)
    r = await prov.http.post(
        VOLUMES, json={"name": "theirs", "size_gib": 1, "volume_type": "standard"}, headers=prov.auth(prov.tenants.b)
    )
    body = assert_problem(r, 409, "resource_exhausted", "no_valid_cluster")
    assert {"cluster": "c2", "reason": "tenant not allowed"} in body["rejections"]
    assert await whole_state(prov) == before
    # Opening it to everyone (null) lets B in.
    assert (await _patch(prov, c2["id"], allowed_tenants=None))["allowed_tenants"] is None
    assert (await create_volume(prov, prov.tenants.b, "theirs"))["cluster_id"] == c2["id"]


async def test_zone_picks_the_cluster(prov: Provisioner, tmp_path: Path) -> None:
    east = await _register(prov, _cluster_body(tmp_path / "east", name="east", zone="east"))
    west = await _register(prov, _cluster_body(tmp_path / "west", name="west", zone="west"))
    for zone, cluster in (("east", east), ("west", west), ("default", await local_cluster(prov))):
        vol = await create_volume(prov, prov.tenants.a, f"in-{zone}", zone=zone)
        assert (vol["zone"], vol["cluster_id"]) == (zone, cluster["id"])
    r = await prov.http.post(
        VOLUMES,
        json={"name": "north", "size_gib": 1, "volume_type": "standard", "zone": "north"},
        headers=prov.auth(prov.tenants.a),
    )
    body = assert_problem(r, 409, "resource_exhausted", "no_valid_cluster")
    assert len(body["rejections"]) == 3


async def test_volume_type_served_by_one_cluster_only(prov: Provisioner, tmp_path: Path) -> None:
    h = prov.auth(prov.tenants.admin)
    r = await prov.http.post("/v1/volume-types", json={"name": "fast", "description": "ssd"}, headers=h)
    assert r.status_code == 201 and r.json() == {"name": "fast", "description": "ssd"}
    r = await prov.http.post(
        VOLUMES, json={"name": "quick", "size_gib": 1, "volume_type": "fast"}, headers=prov.auth(prov.tenants.a)
    )
    body = assert_problem(r, 409, "resource_exhausted", "no_valid_cluster")
    assert body["rejections"] == [{"cluster": "local", "reason": "does not serve volume type fast"}]

    fast = await _register(prov, _cluster_body(tmp_path / "fast", name="fast-pool", volume_types=["fast"]))
    vol = await create_volume(prov, prov.tenants.a, "quick", volume_type="fast")
    assert vol["cluster_id"] == fast["id"]
    # The local cluster starts serving it too once patched.
    local = await local_cluster(prov)
    patched = await _patch(prov, local["id"], volume_types=["standard", "fast"])
    assert patched["volume_types"] == ["standard", "fast"]
    names = [
        t["name"] for t in (await prov.http.get("/v1/volume-types", headers=prov.auth(prov.tenants.a))).json()["items"]
    ]
    assert names == ["fast", "standard"]


async def test_volume_types_are_idempotent(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.admin)
    body = {"name": "gold", "description": "replicated"}
    assert (await prov.http.post("/v1/volume-types", json=body, headers=h)).status_code == 201
    assert (await prov.http.post("/v1/volume-types", json=body, headers=h)).status_code == 201
    r = await prov.http.post("/v1/volume-types", json=body | {"description": "other"}, headers=h)
    assert_problem(r, 409, "already_exists")


async def test_restores_and_clones_stay_on_the_source_cluster(prov: Provisioner, tmp_path: Path) -> None:
    h = prov.auth(prov.tenants.a)
    src = await create_volume(prov, prov.tenants.a, "src", 2)
    r = await prov.http.post("/v1/snapshots", json={"name": "src-snap", "volume_id": src["id"]}, headers=h)
    snap = r.json()
    assert r.status_code == 201 and snap["cluster_id"] == src["cluster_id"]
    await _register(prov, _cluster_body(tmp_path / "c2"))  # emptier, but cannot see the source's data
    restored = await create_volume(prov, prov.tenants.a, "restored", 2, source_snapshot_id=snap["id"])
    cloned = await create_volume(prov, prov.tenants.a, "cloned", 2, source_volume_id=src["id"])
    assert restored["cluster_id"] == cloned["cluster_id"] == src["cluster_id"]
    assert restored["source_snapshot_id"] == snap["id"] and cloned["source_volume_id"] == src["id"]


@pytest.mark.parametrize(
    ("change", "status", "code", "reason"),
    [
        ({"config": {"root": "relative/path"}}, 400, "invalid_argument", "invalid_backend_config"),
        ({"config": {}}, 400, "invalid_argument", "invalid_backend_config"),
        ({"volume_types": ["nope"]}, 400, "invalid_argument", "unknown_volume_type"),
        ({"volume_types": []}, 422, "invalid_argument", "validation_failed"),
        ({"backend": "ceph"}, 422, "invalid_argument", "validation_failed"),
        ({"capacity_gib": 0}, 422, "invalid_argument", "validation_failed"),
        ({"capacity_gib": True}, 422, "invalid_argument", "validation_failed"),
        ({"overcommit_ratio": 0.5}, 422, "invalid_argument", "validation_failed"),
        ({"state": "broken"}, 422, "invalid_argument", "validation_failed"),
        ({"name": "local"}, 409, "already_exists", None),
    ],
)
async def test_cluster_registration_rejections(
    prov: Provisioner, tmp_path: Path, change: dict[str, Any], status: int, code: str, reason: str | None
) -> None:
    before = await whole_state(prov)
    r = await prov.http.post(
        CLUSTERS, json=_cluster_body(tmp_path / "c2") | change, headers=prov.auth(prov.tenants.admin)
    )
    assert_problem(r, status, code, reason)
    assert await whole_state(prov) == before


@pytest.mark.parametrize(
    ("change", "status", "code", "reason"),
    [
        ({"state": "broken"}, 422, "invalid_argument", "validation_failed"),
        ({"state": None}, 422, "invalid_argument", "validation_failed"),
        ({"capacity_gib": None}, 422, "invalid_argument", "validation_failed"),
        ({"overcommit_ratio": None}, 422, "invalid_argument", "validation_failed"),
        ({"volume_types": None}, 422, "invalid_argument", "validation_failed"),
        ({"volume_types": ["nope"]}, 400, "invalid_argument", "unknown_volume_type"),
        ({"capacity_gib": -1}, 422, "invalid_argument", "validation_failed"),
        ({"name": "renamed"}, 422, "invalid_argument", "validation_failed"),
    ],
)
async def test_cluster_patch_rejections(
    prov: Provisioner, change: dict[str, Any], status: int, code: str, reason: str | None
) -> None:
    local = await local_cluster(prov)
    before = await whole_state(prov)
    r = await prov.http.patch(f"{CLUSTERS}/{local['id']}", json=change, headers=prov.auth(prov.tenants.admin))
    assert_problem(r, status, code, reason)
    assert await whole_state(prov) == before


async def test_patch_unknown_cluster_is_404(prov: Provisioner) -> None:
    before = await whole_state(prov)
    r = await prov.http.patch(
        f"{CLUSTERS}/cl-missing", json={"state": "draining"}, headers=prov.auth(prov.tenants.admin)
    )
    assert_problem(r, 404, "not_found", "cluster_not_found")
    r = await prov.http.patch(f"{CLUSTERS}/cl-missing", json={}, headers=prov.auth(prov.tenants.admin))
    assert_problem(r, 404, "not_found", "cluster_not_found")
    assert await whole_state(prov) == before


async def test_quota_tracks_usage_through_the_lifecycle(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.a)
    fresh = (await prov.http.get(f"/v1/quotas/{prov.tenants.tenant_a}", headers=h)).json()
    assert fresh == {
        "tenant": prov.tenants.tenant_a,
        "volumes": prov.settings.default_quota_volumes,
        "gigabytes": prov.settings.default_quota_gigabytes,
        "used_volumes": 0,
        "used_gigabytes": 0,
    }
    set_to = await set_quota(prov, prov.tenants.tenant_a, 3, 10)
    assert (set_to["volumes"], set_to["gigabytes"], set_to["used_volumes"]) == (3, 10, 0)

    vol = await create_volume(prov, prov.tenants.a, "one", 2)
    r = await prov.http.post(f"{VOLUMES}/{vol['id']}/expand", json={"size_gib": 6}, headers=h)
    assert r.status_code == 200, r.text
    quota = await prov.bus.request("berth.provisioner.quota.get", {}, token=prov.tenants.a)
    assert (quota["used_volumes"], quota["used_gigabytes"]) == (1, 6)

    # Lowering the limit under the usage is allowed: nothing new fits, deleting still works.
    await set_quota(prov, prov.tenants.tenant_a, 0, 0)
    r = await prov.http.post(VOLUMES, json={"name": "two", "size_gib": 1, "volume_type": "standard"}, headers=h)
    assert_problem(r, 409, "resource_exhausted", "quota_exceeded")
    assert (await prov.http.delete(f"{VOLUMES}/{vol['id']}", headers=h)).status_code == 204
    quota = (await prov.http.get(f"/v1/quotas/{prov.tenants.tenant_a}", headers=h)).json()
    assert (quota["volumes"], quota["used_volumes"], quota["used_gigabytes"]) == (0, 0, 0)


@pytest.mark.parametrize(
    ("tenant", "body"),
    [
        ("Bad-Tenant", {"volumes": 1, "gigabytes": 1}),
        ("ok", {"volumes": -1, "gigabytes": 1}),
        ("ok", {"volumes": 1}),
        ("ok", {"volumes": "1", "gigabytes": 1}),
        ("ok", {"volumes": 1, "gigabytes": 1, "extra": 1}),
    ],
)
async def test_quota_set_rejections(prov: Provisioner, tenant: str, body: dict[str, Any]) -> None:
    before = await whole_state(prov)
    r = await prov.http.put(f"/v1/quotas/{tenant}", json=body, headers=prov.auth(prov.tenants.admin))
    assert_problem(r, 422, "invalid_argument", "validation_failed")
    assert await whole_state(prov) == before


async def test_bus_cluster_commands(prov: Provisioner, tmp_path: Path) -> None:
    admin = prov.tenants.admin
    c2 = await prov.bus.request("berth.provisioner.cluster.register", _cluster_body(tmp_path / "c2"), token=admin)
    updated = await prov.bus.request(
        "berth.provisioner.cluster.update", {"id": c2["id"], "state": "draining"}, token=admin
    )
    assert updated["state"] == "draining"
    listed = await prov.bus.request("berth.provisioner.cluster.list", {}, token=admin)
    assert sorted(c["name"] for c in listed["items"]) == ["c2", "local"]

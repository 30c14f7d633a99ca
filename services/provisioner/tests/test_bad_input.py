"""Bad input: each rejected request is a specific 4xx problem (HTTP) or typed error (bus),
never a 500, and changes nothing: no row, no reservation, no backend file, no event."""

from __future__ import annotations

from typing import Any

import pytest
from provisioner_checks import VOLUMES, assert_problem, create_volume, local_cluster, set_quota, whole_state
from provisioner_harness import Provisioner

from berth_shared.errors import (
    AlreadyExists,
    BerthError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)

CREATE = "berth.provisioner.volume.create"
OK = {"name": "vol-ok", "size_gib": 1, "volume_type": "standard"}

# (body change, the field the problem must name)
INVALID_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"size_gib": 0}, "size_gib"),
    ({"size_gib": -1}, "size_gib"),
    ({"size_gib": 64 * 1024 + 1}, "size_gib"),
    ({"size_gib": 10**30}, "size_gib"),
    ({"size_gib": "abc"}, "size_gib"),
    ({"size_gib": 1.5}, "size_gib"),
    ({"size_gib": True}, "size_gib"),
    ({"size_gib": None}, "size_gib"),
    ({"size_gib": [1]}, "size_gib"),
    ({"name": ""}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "-leading-dash"}, "name"),
    ({"name": ".hidden"}, "name"),
    ({"name": "../escape"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": "trailing-newline\n"}, "name"),
    ({"name": "é"}, "name"),
    ({"name": "x" * 129}, "name"),
    ({"name": 7}, "name"),
    ({"volume_type": ""}, "volume_type"),
    ({"zone": "no zone"}, "zone"),
    ({"source_snapshot_id": "snap-1", "source_volume_id": "vol-1"}, ""),
    ({"unexpected": 1}, "unexpected"),
]
MISSING = ["name", "size_gib", "volume_type"]


def _ids(cases: list[tuple[dict[str, Any], str]]) -> list[str]:
    return [repr(c)[:40] for c, _ in cases]


@pytest.mark.parametrize(("change", "field"), INVALID_BODIES, ids=_ids(INVALID_BODIES))
async def test_http_create_rejects_invalid_body(prov: Provisioner, change: dict[str, Any], field: str) -> None:
    before = await whole_state(prov)
    r = await prov.http.post(VOLUMES, json=OK | change, headers=prov.auth(prov.tenants.a))
    body = assert_problem(r, 422, "invalid_argument", "validation_failed")
    assert field in [e["field"] for e in body["errors"]], body
    assert await whole_state(prov) == before


@pytest.mark.parametrize("missing", MISSING)
async def test_http_create_rejects_missing_field(prov: Provisioner, missing: str) -> None:
    before = await whole_state(prov)
    body = {k: v for k, v in OK.items() if k != missing}
    r = await prov.http.post(VOLUMES, json=body, headers=prov.auth(prov.tenants.a))
    problem = assert_problem(r, 422, "invalid_argument", "validation_failed")
    assert missing in [e["field"] for e in problem["errors"]]
    assert await whole_state(prov) == before


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b"\xff\xfe"])
async def test_http_create_rejects_malformed_json(prov: Provisioner, raw: bytes) -> None:
    before = await whole_state(prov)
    headers = prov.auth(prov.tenants.a) | {"content-type": "application/json"}
    r = await prov.http.post(VOLUMES, content=raw, headers=headers)
    assert_problem(r, 422, "invalid_argument", "validation_failed")
    assert await whole_state(prov) == before


@pytest.mark.parametrize(("change", "field"), INVALID_BODIES, ids=_ids(INVALID_BODIES))
async def test_bus_create_rejects_invalid_body(prov: Provisioner, change: dict[str, Any], field: str) -> None:
    before = await whole_state(prov)
    with pytest.raises(InvalidArgument) as exc:
        await prov.bus.request(CREATE, OK | change, token=prov.tenants.a)
    assert exc.value.reason == "validation_failed"
    assert any(e["field"] == field for e in exc.value.extra["errors"]), exc.value.extra
    assert await whole_state(prov) == before


async def test_unknown_volume_type(prov: Provisioner) -> None:
    before = await whole_state(prov)
    r = await prov.http.post(VOLUMES, json=OK | {"volume_type": "gold"}, headers=prov.auth(prov.tenants.a))
    body = assert_problem(r, 400, "invalid_argument", "unknown_volume_type")
    # It says which types there are, so the caller can pick one.
    assert body["detail"] == "unknown volume type 'gold'; the volume types are: standard"
    assert body["valid_types"] == ["standard"]
    with pytest.raises(InvalidArgument) as exc:
        await prov.bus.request(CREATE, OK | {"volume_type": "gold"}, token=prov.tenants.a)
    assert exc.value.reason == "unknown_volume_type" and exc.value.extra["valid_types"] == ["standard"]
    assert await whole_state(prov) == before


async def test_no_cluster_in_the_zone(prov: Provisioner) -> None:
    before = await whole_state(prov)
    r = await prov.http.post(VOLUMES, json=OK | {"zone": "mars"}, headers=prov.auth(prov.tenants.a))
    body = assert_problem(r, 409, "resource_exhausted", "no_valid_cluster")
    assert body["rejections"] == [{"cluster": "local", "reason": "in zone default, not mars"}]
    with pytest.raises(ResourceExhausted) as exc:
        await prov.bus.request(CREATE, OK | {"zone": "mars"}, token=prov.tenants.a)
    assert exc.value.reason == "no_valid_cluster"
    assert await whole_state(prov) == before


async def test_no_cluster_with_room(prov: Provisioner) -> None:
    # Lift the quota so that the cluster's limit (1024 GiB x 4 overcommit) is what refuses.
    await set_quota(prov, prov.tenants.tenant_a, 100, 100_000)
    local = await local_cluster(prov)
    limit = int(local["capacity_gib"] * local["overcommit_ratio"])
    before = await whole_state(prov)
    r = await prov.http.post(VOLUMES, json=OK | {"size_gib": limit + 1}, headers=prov.auth(prov.tenants.a))
    body = assert_problem(r, 409, "resource_exhausted", "no_valid_cluster")
    assert "overcommit limit" in body["rejections"][0]["reason"]
    with pytest.raises(ResourceExhausted) as exc:
        await prov.bus.request(CREATE, OK | {"size_gib": limit + 1}, token=prov.tenants.a)
    assert exc.value.reason == "no_valid_cluster"
    assert await whole_state(prov) == before
    # Exactly at the limit still fits (thin: no real space is used).
    vol = await create_volume(prov, prov.tenants.a, "at-limit", limit)
    assert vol["size_gib"] == limit


async def test_quota_exceeded_volumes_and_gigabytes(prov: Provisioner) -> None:
    await set_quota(prov, prov.tenants.tenant_a, 1, 5)
    await create_volume(prov, prov.tenants.a, "first", 2)
    before = await whole_state(prov)
    h = prov.auth(prov.tenants.a)
    r = await prov.http.post(VOLUMES, json=OK | {"name": "second"}, headers=h)
    body = assert_problem(r, 409, "resource_exhausted", "quota_exceeded")
    assert "1/1 volumes" in body["detail"]
    with pytest.raises(ResourceExhausted) as exc:
        await prov.bus.request(CREATE, OK | {"name": "second"}, token=prov.tenants.a)
    assert exc.value.reason == "quota_exceeded"
    assert await whole_state(prov) == before

    await set_quota(prov, prov.tenants.tenant_a, 10, 5)
    before = await whole_state(prov)
    r = await prov.http.post(VOLUMES, json=OK | {"name": "big", "size_gib": 4}, headers=h)
    assert_problem(r, 409, "resource_exhausted", "quota_exceeded")
    assert await whole_state(prov) == before
    # Tenant B's quota is its own.
    await create_volume(prov, prov.tenants.b, "second", 4)


async def test_default_gigabyte_quota(prov: Provisioner) -> None:
    before = await whole_state(prov)
    too_big = prov.settings.default_quota_gigabytes + 1
    r = await prov.http.post(VOLUMES, json=OK | {"size_gib": too_big}, headers=prov.auth(prov.tenants.a))
    assert_problem(r, 409, "resource_exhausted", "quota_exceeded")
    assert await whole_state(prov) == before


async def test_unknown_source_snapshot_and_volume(prov: Provisioner) -> None:
    before = await whole_state(prov)
    h = prov.auth(prov.tenants.a)
    r = await prov.http.post(VOLUMES, json=OK | {"source_snapshot_id": "snap-missing"}, headers=h)
    assert_problem(r, 404, "not_found", "snapshot_not_found")
    r = await prov.http.post(VOLUMES, json=OK | {"source_volume_id": "vol-missing"}, headers=h)
    assert_problem(r, 404, "not_found", "volume_not_found")
    with pytest.raises(NotFound) as exc:
        await prov.bus.request(CREATE, OK | {"source_snapshot_id": "snap-missing"}, token=prov.tenants.a)
    assert exc.value.reason == "snapshot_not_found"
    assert await whole_state(prov) == before


async def test_restore_smaller_than_source(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.a)
    vol = await create_volume(prov, prov.tenants.a, "src", 3)
    r = await prov.http.post("/v1/snapshots", json={"name": "src-snap", "volume_id": vol["id"]}, headers=h)
    assert r.status_code == 201, r.text
    before = await whole_state(prov)
    r = await prov.http.post(
        VOLUMES, json=OK | {"name": "small", "size_gib": 2, "source_snapshot_id": r.json()["id"]}, headers=h
    )
    assert_problem(r, 400, "out_of_range")
    r = await prov.http.post(
        VOLUMES, json=OK | {"name": "small", "size_gib": 2, "source_volume_id": vol["id"]}, headers=h
    )
    assert_problem(r, 400, "out_of_range")
    assert await whole_state(prov) == before


async def test_expand_rejections(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.a)
    vol = await create_volume(prov, prov.tenants.a, "grow", 2)
    url = f"{VOLUMES}/{vol['id']}/expand"
    before = await whole_state(prov)

    assert_problem(await prov.http.post(url, json={"size_gib": 1}, headers=h), 400, "out_of_range")
    with pytest.raises(OutOfRange):
        await prov.bus.request(
            "berth.provisioner.volume.expand", {"id": vol["id"], "size_gib": 1}, token=prov.tenants.a
        )
    for bad in (0, -5, "x", True, 64 * 1024 + 1):
        r = await prov.http.post(url, json={"size_gib": bad}, headers=h)
        assert_problem(r, 422, "invalid_argument", "validation_failed")
    # Quota (default 1000 GiB) refuses before the cluster does.
    r = await prov.http.post(url, json={"size_gib": prov.settings.default_quota_gigabytes + 1}, headers=h)
    assert_problem(r, 409, "resource_exhausted", "quota_exceeded")
    assert await whole_state(prov) == before

    # With the quota lifted, the cluster's overcommit limit refuses.
    await set_quota(prov, prov.tenants.tenant_a, 100, 100_000)
    before = await whole_state(prov)
    local = await local_cluster(prov)
    r = await prov.http.post(
        url, json={"size_gib": int(local["capacity_gib"] * local["overcommit_ratio"]) + 1}, headers=h
    )
    assert_problem(r, 409, "resource_exhausted", "cluster_full")
    assert await whole_state(prov) == before

    # Same size is a no-op success.
    r = await prov.http.post(url, json={"size_gib": 2}, headers=h)
    assert r.status_code == 200 and r.json()["size_gib"] == 2
    assert await whole_state(prov) == before


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
    ids=["missing", "unknown", "basic", "empty"],
)
async def test_http_needs_a_valid_token(prov: Provisioner, headers: dict[str, str]) -> None:
    before = await whole_state(prov)
    for method, url, body in [
        ("POST", VOLUMES, OK),
        ("GET", VOLUMES, None),
        ("GET", f"{VOLUMES}/vol-x", None),
        ("DELETE", f"{VOLUMES}/vol-x", None),
        ("POST", "/v1/snapshots", {"name": "s", "volume_id": "vol-x"}),
        ("GET", "/v1/clusters", None),
        ("PUT", "/v1/quotas/someone", {"volumes": 1, "gigabytes": 1}),
    ]:
        r = await prov.http.request(method, url, json=body, headers=headers)
        assert_problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"] == "Bearer"
    assert await whole_state(prov) == before


@pytest.mark.parametrize("token", [None, "nope"], ids=["missing", "unknown"])
async def test_bus_needs_a_valid_token(prov: Provisioner, token: str | None) -> None:
    before = await whole_state(prov)
    for subject, body in [
        (CREATE, OK),
        ("berth.provisioner.volume.list", {}),
        ("berth.provisioner.cluster.list", {}),
    ]:
        with pytest.raises(Unauthenticated):
            await prov.bus.request(subject, body, token=token)
    assert await whole_state(prov) == before


async def test_admin_endpoints_need_admin(prov: Provisioner, tmp_path: Any) -> None:
    local = await local_cluster(prov)
    h = prov.auth(prov.tenants.a)
    cluster = {"name": "c2", "config": {"root": str(tmp_path / "c2")}, "volume_types": ["standard"], "capacity_gib": 10}
    before = await whole_state(prov)
    for method, url, body in [
        ("POST", "/v1/clusters", cluster),
        ("GET", "/v1/clusters", None),
        ("PATCH", f"/v1/clusters/{local['id']}", {"state": "draining"}),
        ("POST", "/v1/volume-types", {"name": "gold"}),
        ("PUT", f"/v1/quotas/{prov.tenants.tenant_a}", {"volumes": 1000, "gigabytes": 100000}),
        ("GET", f"/v1/quotas/{prov.tenants.tenant_b}", None),
    ]:
        r = await prov.http.request(method, url, json=body, headers=h)
        assert_problem(r, 403, "permission_denied")
    for subject, body in [
        ("berth.provisioner.cluster.register", cluster),
        ("berth.provisioner.cluster.update", {"id": local["id"], "state": "readonly"}),
        ("berth.provisioner.cluster.list", {}),
        ("berth.provisioner.type.create", {"name": "gold"}),
        ("berth.provisioner.quota.set", {"tenant": prov.tenants.tenant_a, "volumes": 1000, "gigabytes": 100000}),
        ("berth.provisioner.quota.get", {"tenant": prov.tenants.tenant_b}),
    ]:
        with pytest.raises(PermissionDenied):
            await prov.bus.request(subject, body, token=prov.tenants.a)
    assert await whole_state(prov) == before
    # A tenant reads its own quota and the volume types.
    r = await prov.http.get(f"/v1/quotas/{prov.tenants.tenant_a}", headers=h)
    assert r.status_code == 200 and r.json()["tenant"] == prov.tenants.tenant_a
    assert (await prov.http.get("/v1/volume-types", headers=h)).status_code == 200


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", f"{VOLUMES}/vol%00x"),
        ("GET", f"{VOLUMES}/{'v' * 300}"),
        ("DELETE", f"{VOLUMES}/vol%00x"),
        ("GET", "/v1/snapshots/snap%00x"),
        ("GET", f"{VOLUMES}?starting_token=a%00b"),
        ("GET", "/v1/snapshots?volume_id=a%00b"),
        ("GET", "/v1/quotas/a%00b"),
    ],
    ids=["nul-volume", "long-volume", "nul-delete", "nul-snapshot", "nul-token", "nul-filter", "nul-tenant"],
)
async def test_malformed_ids_are_422_never_500(prov: Provisioner, method: str, url: str) -> None:
    """PostgreSQL refuses NUL bytes in text: such ids are refused before any query runs."""
    before = await whole_state(prov)
    r = await prov.http.request(method, url, headers=prov.auth(prov.tenants.admin))
    assert_problem(r, 422, "invalid_argument", "validation_failed")
    with pytest.raises(InvalidArgument):
        await prov.bus.request("berth.provisioner.volume.list", {"starting_token": "a\x00b"}, token=prov.tenants.a)
    with pytest.raises(InvalidArgument):
        await prov.bus.request("berth.provisioner.volume.get", {"id": "vol\x00x"}, token=prov.tenants.a)
    assert await whole_state(prov) == before


async def test_typed_errors_round_trip_over_the_bus(prov: Provisioner) -> None:
    """Each bus error is the same class the service raised, with its reason and extras."""
    await create_volume(prov, prov.tenants.a, "dup", 1)
    with pytest.raises(AlreadyExists) as exc:
        await prov.bus.request(CREATE, OK | {"name": "dup", "size_gib": 2}, token=prov.tenants.a)
    assert exc.value.reason == "already_exists" and exc.value.extra["volume_id"].startswith("vol-")
    assert isinstance(exc.value, BerthError) and exc.value.status == 409

"""Idempotency (the name is the key) and concurrency (limits hold under parallel requests)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from provisioner_checks import (
    VOLUMES,
    assert_problem,
    create_volume,
    db_state,
    files_under,
    local_cluster,
    local_volume_dir,
    set_quota,
    whole_state,
)
from provisioner_harness import Provisioner

from berth_shared.errors import AlreadyExists, BerthError, ResourceExhausted

CREATE = "berth.provisioner.volume.create"
SPEC: dict[str, Any] = {"name": "idem", "size_gib": 2, "volume_type": "standard"}


async def test_http_same_name_same_spec_is_the_same_volume(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.a)
    first = await prov.http.post(VOLUMES, json=SPEC, headers=h)
    assert first.status_code == 201, first.text
    state = await whole_state(prov)
    again = await prov.http.post(VOLUMES, json=SPEC, headers=h)
    assert again.status_code == 201 and again.json() == first.json()
    # Naming the zone it landed in is the same spec too.
    again = await prov.http.post(VOLUMES, json=SPEC | {"zone": "default"}, headers=h)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert await whole_state(prov) == state, "a replay changes nothing and emits nothing"


async def test_bus_and_http_share_the_idempotency_key(prov: Provisioner) -> None:
    vol = await prov.bus.request(CREATE, SPEC, token=prov.tenants.a)
    again = await prov.bus.request(CREATE, SPEC, token=prov.tenants.a, idempotency_key="idem")
    assert again == vol
    r = await prov.http.post(VOLUMES, json=SPEC, headers=prov.auth(prov.tenants.a))
    assert r.status_code == 201 and r.json()["id"] == vol["id"]
    assert files_under(local_volume_dir(prov)) == [f"{vol['id']}.img"]


@pytest.mark.parametrize(
    "change",
    [{"size_gib": 3}, {"zone": "elsewhere"}, {"source_volume_id": "vol-other"}],
    ids=["size", "zone", "source"],
)
async def test_same_name_different_spec_is_409(prov: Provisioner, change: dict[str, Any]) -> None:
    vol = await create_volume(prov, prov.tenants.a, SPEC["name"], SPEC["size_gib"])
    before = await whole_state(prov)
    r = await prov.http.post(VOLUMES, json=SPEC | change, headers=prov.auth(prov.tenants.a))
    body = assert_problem(r, 409, "already_exists")
    assert body["volume_id"] == vol["id"]
    with pytest.raises(AlreadyExists) as exc:
        await prov.bus.request(CREATE, SPEC | change, token=prov.tenants.a)
    assert exc.value.extra["volume_id"] == vol["id"]
    assert await whole_state(prov) == before


async def test_same_name_different_volume_type_is_409(prov: Provisioner) -> None:
    r = await prov.http.post(
        "/v1/volume-types", json={"name": "fast", "description": "x"}, headers=prov.auth(prov.tenants.admin)
    )
    assert r.status_code == 201, r.text
    await create_volume(prov, prov.tenants.a, SPEC["name"], SPEC["size_gib"])
    r = await prov.http.post(VOLUMES, json=SPEC | {"volume_type": "fast"}, headers=prov.auth(prov.tenants.a))
    assert_problem(r, 409, "already_exists")


async def test_snapshot_idempotency(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.a)
    v1 = await create_volume(prov, prov.tenants.a, "v1")
    v2 = await create_volume(prov, prov.tenants.a, "v2")
    body = {"name": "nightly", "volume_id": v1["id"]}
    first = await prov.http.post("/v1/snapshots", json=body, headers=h)
    assert first.status_code == 201, first.text
    state = await whole_state(prov)
    again = await prov.http.post("/v1/snapshots", json=body, headers=h)
    assert again.status_code == 201 and again.json() == first.json()
    over_bus = await prov.bus.request("berth.provisioner.snapshot.create", body, token=prov.tenants.a)
    assert over_bus["id"] == first.json()["id"]
    assert await whole_state(prov) == state

    r = await prov.http.post("/v1/snapshots", json={"name": "nightly", "volume_id": v2["id"]}, headers=h)
    problem = assert_problem(r, 409, "already_exists")
    assert problem["snapshot_id"] == first.json()["id"]
    with pytest.raises(AlreadyExists):
        await prov.bus.request(
            "berth.provisioner.snapshot.create", {"name": "nightly", "volume_id": v2["id"]}, token=prov.tenants.a
        )
    assert await whole_state(prov) == state


async def _one_volume_named(prov: Provisioner, name: str) -> str:
    state = await db_state(prov)
    rows = [v for v in state["volumes"] if v["name"] == name]
    assert len(rows) == 1, rows
    assert files_under(local_volume_dir(prov)) == [f"{rows[0]['id']}.img"]
    quota = [q for q in state["quotas"] if q["tenant"] == prov.tenants.tenant_a]
    assert (quota[0]["used_volumes"], quota[0]["used_gigabytes"]) == (1, rows[0]["size_gib"])
    local = await local_cluster(prov)
    assert (local["volume_count"], local["provisioned_gib"]) == (1, rows[0]["size_gib"])
    return str(rows[0]["id"])


async def test_50_parallel_http_creates_same_name_make_one_volume(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.a)
    replies = await asyncio.gather(*(prov.http.post(VOLUMES, json=SPEC, headers=h) for _ in range(50)))
    assert {r.status_code for r in replies} == {201}, {r.text for r in replies if r.status_code != 201}
    assert {r.json()["id"] for r in replies} == {await _one_volume_named(prov, "idem")}
    assert {r.json()["status"] for r in replies} == {"available"}


async def test_50_parallel_creates_same_name_over_bus_and_http_make_one_volume(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.a)

    async def over_http() -> str:
        r = await prov.http.post(VOLUMES, json=SPEC, headers=h)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def over_bus() -> str:
        return str((await prov.bus.request(CREATE, SPEC, token=prov.tenants.a))["id"])

    ids = await asyncio.gather(*(over_bus() if i % 2 else over_http() for i in range(50)))
    assert set(ids) == {await _one_volume_named(prov, "idem")}


async def test_50_parallel_creates_against_a_quota_of_10_make_exactly_10(prov: Provisioner) -> None:
    await set_quota(prov, prov.tenants.tenant_a, 10, 1000)
    h = prov.auth(prov.tenants.a)
    bodies = [SPEC | {"name": f"q-{i:02d}", "size_gib": 1} for i in range(50)]
    replies: list[httpx.Response] = await asyncio.gather(*(prov.http.post(VOLUMES, json=b, headers=h) for b in bodies))
    ok = [r for r in replies if r.status_code == 201]
    refused = [r for r in replies if r.status_code != 201]
    assert len(ok) == 10, [r.text for r in replies][:3]
    for r in refused:
        assert_problem(r, 409, "resource_exhausted", "quota_exceeded")
    quota = (await prov.http.get(f"/v1/quotas/{prov.tenants.tenant_a}", headers=h)).json()
    assert (quota["used_volumes"], quota["used_gigabytes"]) == (10, 10)
    listed = (await prov.http.get(VOLUMES, headers=h)).json()["items"]
    assert sorted(v["id"] for v in listed) == sorted(r.json()["id"] for r in ok)
    assert files_under(local_volume_dir(prov)) == sorted(f"{r.json()['id']}.img" for r in ok)
    local = await local_cluster(prov)
    assert (local["volume_count"], local["provisioned_gib"]) == (10, 10)


async def test_50_parallel_bus_creates_against_a_gigabyte_quota(prov: Provisioner) -> None:
    await set_quota(prov, prov.tenants.tenant_a, 100, 25)

    async def create(i: int) -> dict[str, Any] | BerthError:
        try:
            return await prov.bus.request(CREATE, SPEC | {"name": f"g-{i:02d}", "size_gib": 2}, token=prov.tenants.a)
        except BerthError as exc:
            return exc

    results = await asyncio.gather(*(create(i) for i in range(50)))
    ok = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if not isinstance(r, dict)]
    assert len(ok) == 12  # 12 x 2 GiB fit in 25, a 13th does not
    assert all(isinstance(r, ResourceExhausted) and r.reason == "quota_exceeded" for r in refused), refused[:3]
    quota = await prov.bus.request("berth.provisioner.quota.get", {}, token=prov.tenants.a)
    assert (quota["used_volumes"], quota["used_gigabytes"]) == (12, 24)


async def test_parallel_snapshots_same_name_make_one(prov: Provisioner) -> None:
    vol = await create_volume(prov, prov.tenants.a, "src")
    h = prov.auth(prov.tenants.a)
    body = {"name": "snap", "volume_id": vol["id"]}
    replies = await asyncio.gather(*(prov.http.post("/v1/snapshots", json=body, headers=h) for _ in range(20)))
    assert {r.status_code for r in replies} == {201}, {r.text for r in replies}
    (snap_id,) = {r.json()["id"] for r in replies}
    snap_dir = local_volume_dir(prov).parent / "snapshots"
    assert files_under(snap_dir) == [f"{snap_id}.img"]
    assert len((await db_state(prov))["snapshots"]) == 1


async def test_parallel_deletes_release_the_quota_once(prov: Provisioner) -> None:
    vol = await create_volume(prov, prov.tenants.a, "gone", 3)
    await create_volume(prov, prov.tenants.a, "stays", 2)
    h = prov.auth(prov.tenants.a)
    replies = await asyncio.gather(*(prov.http.delete(f"{VOLUMES}/{vol['id']}", headers=h) for _ in range(20)))
    for r in replies:
        if r.status_code == 404:  # the delete had already finished
            assert_problem(r, 404, "not_found", "volume_not_found")
        elif r.status_code != 204:  # lost the race to mark it deleting: CSI retries
            assert_problem(r, 409, "aborted")
    assert any(r.status_code == 204 for r in replies)
    quota = (await prov.http.get(f"/v1/quotas/{prov.tenants.tenant_a}", headers=h)).json()
    assert (quota["used_volumes"], quota["used_gigabytes"]) == (1, 2)
    local = await local_cluster(prov)
    assert (local["volume_count"], local["provisioned_gib"]) == (1, 2)
    assert f"{vol['id']}.img" not in files_under(local_volume_dir(prov))


async def test_parallel_expands_to_one_size_reserve_once(prov: Provisioner) -> None:
    vol = await create_volume(prov, prov.tenants.a, "grow", 1)
    h = prov.auth(prov.tenants.a)
    url = f"{VOLUMES}/{vol['id']}/expand"
    replies = await asyncio.gather(*(prov.http.post(url, json={"size_gib": 5}, headers=h) for _ in range(20)))
    for r in replies:
        if r.status_code != 200:  # a request that arrived while another size was committing
            assert_problem(r, 409, "aborted")
    assert any(r.status_code == 200 and r.json()["size_gib"] == 5 for r in replies)
    got = (await prov.http.get(f"{VOLUMES}/{vol['id']}", headers=h)).json()
    assert (got["size_gib"], got["status"]) == (5, "available")
    quota = (await prov.http.get(f"/v1/quotas/{prov.tenants.tenant_a}", headers=h)).json()
    assert quota["used_gigabytes"] == 5
    local = await local_cluster(prov)
    assert local["provisioned_gib"] == 5
    assert (local_volume_dir(prov) / f"{vol['id']}.img").stat().st_size == 5 * 1024**3


async def test_snapshot_racing_a_delete_never_outlives_its_volume(prov: Provisioner) -> None:
    """Either the snapshot is taken and the delete is refused, or the volume goes and no
    snapshot of it is left behind."""
    h = prov.auth(prov.tenants.a)
    for i in range(10):
        vol = await create_volume(prov, prov.tenants.a, f"race-{i}")
        snap, delete = await asyncio.gather(
            prov.http.post("/v1/snapshots", json={"name": f"race-{i}", "volume_id": vol["id"]}, headers=h),
            prov.http.delete(f"{VOLUMES}/{vol['id']}", headers=h),
        )
        volume_left = (await prov.http.get(f"{VOLUMES}/{vol['id']}", headers=h)).status_code == 200
        snaps = (await prov.http.get("/v1/snapshots", params={"volume_id": vol["id"]}, headers=h)).json()["items"]
        if delete.status_code == 204:
            assert not volume_left and snaps == [], (snap.text, delete.text)
        else:
            assert volume_left, delete.text
            assert delete.json()["reason"] in ("volume_has_snapshots", "aborted"), delete.text
        if snap.status_code == 201:
            assert volume_left and [s["id"] for s in snaps] == [snap.json()["id"]], (snap.text, delete.text)

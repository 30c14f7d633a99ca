"""Tenant isolation: a tenant's token reaches only its own volumes and snapshots; another
tenant's id is simply not found (404 / NotFound), never a hint that it exists."""

from __future__ import annotations

from typing import Any

import pytest
from provisioner_checks import VOLUMES, assert_problem, create_volume, whole_state
from provisioner_harness import Provisioner

from berth_shared.errors import NotFound


async def _volume_with_snapshot(prov: Provisioner) -> tuple[dict[str, Any], dict[str, Any]]:
    vol = await create_volume(prov, prov.tenants.a, "private", 2)
    r = await prov.http.post(
        "/v1/snapshots", json={"name": "private-snap", "volume_id": vol["id"]}, headers=prov.auth(prov.tenants.a)
    )
    assert r.status_code == 201, r.text
    return vol, r.json()


async def test_other_tenants_volume_is_not_found_over_http(prov: Provisioner) -> None:
    vol, snap = await _volume_with_snapshot(prov)
    hb = prov.auth(prov.tenants.b)
    before = await whole_state(prov)
    vid, sid = vol["id"], snap["id"]
    cases: list[tuple[str, str, dict[str, Any] | None, str]] = [
        ("GET", f"{VOLUMES}/{vid}", None, "volume_not_found"),
        ("POST", f"{VOLUMES}/{vid}/expand", {"size_gib": 3}, "volume_not_found"),
        ("DELETE", f"{VOLUMES}/{vid}", None, "volume_not_found"),
        ("POST", "/v1/snapshots", {"name": "steal", "volume_id": vid}, "volume_not_found"),
        ("GET", f"/v1/snapshots/{sid}", None, "snapshot_not_found"),
        ("DELETE", f"/v1/snapshots/{sid}", None, "snapshot_not_found"),
        (
            "POST",
            VOLUMES,
            {"name": "restore", "size_gib": 2, "volume_type": "standard", "source_snapshot_id": sid},
            "snapshot_not_found",
        ),
        (
            "POST",
            VOLUMES,
            {"name": "clone", "size_gib": 2, "volume_type": "standard", "source_volume_id": vid},
            "volume_not_found",
        ),
    ]
    for method, url, body, reason in cases:
        r = await prov.http.request(method, url, json=body, headers=hb)
        assert_problem(r, 404, "not_found", reason)
    # Lists show only B's own (nothing), whatever the filter says.
    assert (await prov.http.get(VOLUMES, headers=hb)).json()["items"] == []
    assert (await prov.http.get("/v1/snapshots", headers=hb)).json()["items"] == []
    r = await prov.http.get("/v1/snapshots", params={"volume_id": vid}, headers=hb)
    assert r.json()["items"] == []
    r = await prov.http.get(VOLUMES, params={"tenant": prov.tenants.tenant_a}, headers=hb)
    assert r.status_code == 200 and r.json()["items"] == [], "only admins may list another tenant"
    assert await whole_state(prov) == before
    # A still sees and owns both.
    ha = prov.auth(prov.tenants.a)
    assert (await prov.http.get(f"{VOLUMES}/{vid}", headers=ha)).json()["size_gib"] == 2
    assert (await prov.http.get(f"/v1/snapshots/{sid}", headers=ha)).status_code == 200


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("volume.get", {"id": "{vid}"}),
        ("volume.expand", {"id": "{vid}", "size_gib": 3}),
        ("volume.delete", {"id": "{vid}"}),
        ("snapshot.create", {"name": "steal", "volume_id": "{vid}"}),
        ("snapshot.get", {"id": "{sid}"}),
        ("snapshot.delete", {"id": "{sid}"}),
        ("volume.create", {"name": "r", "size_gib": 2, "volume_type": "standard", "source_snapshot_id": "{sid}"}),
    ],
)
async def test_other_tenants_ids_are_not_found_over_the_bus(
    prov: Provisioner, subject: str, body: dict[str, Any]
) -> None:
    vol, snap = await _volume_with_snapshot(prov)
    before = await whole_state(prov)
    filled = {k: v.format(vid=vol["id"], sid=snap["id"]) if isinstance(v, str) else v for k, v in body.items()}
    with pytest.raises(NotFound):
        await prov.bus.request(f"berth.provisioner.{subject}", filled, token=prov.tenants.b)
    assert await whole_state(prov) == before


async def test_same_name_in_two_tenants_is_two_volumes(prov: Provisioner) -> None:
    a = await create_volume(prov, prov.tenants.a, "db-0", 1)
    b = await create_volume(prov, prov.tenants.b, "db-0", 2)
    assert a["id"] != b["id"]
    assert (a["tenant"], b["tenant"]) == (prov.tenants.tenant_a, prov.tenants.tenant_b)
    listed_a = (await prov.http.get(VOLUMES, headers=prov.auth(prov.tenants.a))).json()["items"]
    listed_b = await prov.bus.request("berth.provisioner.volume.list", {}, token=prov.tenants.b)
    assert [v["id"] for v in listed_a] == [a["id"]]
    assert [v["id"] for v in listed_b["items"]] == [b["id"]]


async def test_admin_sees_across_tenants(prov: Provisioner) -> None:
    vol = await create_volume(prov, prov.tenants.a, "seen", 1)
    h = prov.auth(prov.tenants.admin)
    assert (await prov.http.get(f"{VOLUMES}/{vol['id']}", headers=h)).json()["id"] == vol["id"]
    r = await prov.http.get(VOLUMES, params={"tenant": prov.tenants.tenant_a}, headers=h)
    assert [v["id"] for v in r.json()["items"]] == [vol["id"]]
    quota = (await prov.http.get(f"/v1/quotas/{prov.tenants.tenant_a}", headers=h)).json()
    assert (quota["used_volumes"], quota["used_gigabytes"]) == (1, 1)


async def test_listing_pages_through_only_the_callers_volumes(prov: Provisioner) -> None:
    mine = sorted([(await create_volume(prov, prov.tenants.a, f"p-{i}"))["id"] for i in range(3)])
    await create_volume(prov, prov.tenants.b, "p-x")
    h = prov.auth(prov.tenants.a)
    page = (await prov.http.get(VOLUMES, params={"limit": 2}, headers=h)).json()
    assert [v["id"] for v in page["items"]] == mine[:2] and page["next_token"] == mine[1]
    page = (await prov.http.get(VOLUMES, params={"limit": 2, "starting_token": page["next_token"]}, headers=h)).json()
    assert [v["id"] for v in page["items"]] == mine[2:] and page["next_token"] is None
    # A member naming another tenant in the query still gets only its own.
    listed = await prov.bus.request(
        "berth.provisioner.volume.list", {"tenant": prov.tenants.tenant_b}, token=prov.tenants.a
    )
    assert sorted(v["id"] for v in listed["items"]) == mine


async def test_admin_acts_on_a_tenants_volume_the_same_way_for_every_operation(prov: Provisioner) -> None:
    """get, expand, snapshot (the snapshot is the tenant's), snapshot delete and delete: an
    admin reaches another tenant's volume for each, as for get."""
    a, admin = prov.auth(prov.tenants.a), prov.auth(prov.tenants.admin)
    vid = (await create_volume(prov, prov.tenants.a, "app-0", 1))["id"]
    assert (await prov.http.get(f"/v1/volumes/{vid}", headers=admin)).status_code == 200
    r = await prov.http.post(f"/v1/volumes/{vid}/expand", json={"size_gib": 2}, headers=admin)
    assert r.status_code == 200 and r.json()["size_gib"] == 2, r.text
    r = await prov.http.post("/v1/snapshots", json={"name": "s-0", "volume_id": vid}, headers=admin)
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["tenant"] == prov.tenants.tenant_a  # the volume's tenant owns it, not the admin
    listed = await prov.http.get("/v1/snapshots", headers=a)
    assert [s["id"] for s in listed.json()["items"]] == [snap["id"]]
    assert (await prov.http.delete(f"/v1/snapshots/{snap['id']}", headers=admin)).status_code == 204
    assert (await prov.http.delete(f"/v1/volumes/{vid}", headers=admin)).status_code == 204
    assert (await prov.http.get(f"/v1/volumes/{vid}", headers=a)).status_code == 404

"""Group snapshots over HTTP and the bus (file backend): one record with a member snapshot per
volume, idempotent by name, restorable, deleted only as a whole, with its events; and the
refusals (another tenant's volume, two clusters, a backend without group snapshots)."""

from __future__ import annotations

from typing import Any

from ceph_clusters import TYPES, register_ceph
from provisioner_checks import EventTap, assert_problem, create_volume, files_under, whole_state
from provisioner_harness import Provisioner

from berth_testing.ceph import CephCluster

GS = "/v1/group-snapshots"


async def _group(prov: Provisioner, token: str, name: str, volume_ids: list[str]) -> dict[str, Any]:
    r = await prov.http.post(GS, json={"name": name, "volume_ids": volume_ids}, headers=prov.auth(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _snapshot_events(tap: EventTap) -> list[str]:
    """The snapshot and group snapshot events (the volumes' own may still be relayed meanwhile)."""
    return sorted(t for t in tap.types() if ".snapshot." in t or ".group_snapshot." in t)


async def _wait_snapshot_events(tap: EventTap, n: int) -> list[str]:
    await tap.wait_for(lambda _events: len(_snapshot_events(tap)) >= n)
    return _snapshot_events(tap)


def _snapshot_files(prov: Provisioner) -> list[str]:
    return files_under(prov.settings.data_dir / "clusters" / "local" / "snapshots")


async def test_group_snapshot_life_over_http(prov: Provisioner) -> None:
    tok, h = prov.tenants.a, prov.auth(prov.tenants.a)
    ta = prov.tenants.tenant_a
    vols = [await create_volume(prov, tok, f"db-{i}") for i in range(2)]
    ids = [v["id"] for v in vols]
    async with EventTap(prov.bus.nc, f"berth.events.{ta}.>") as tap:
        gs = await _group(prov, tok, "nightly", ids[::-1])
        created = await _wait_snapshot_events(tap, 3)
    assert gs["status"] == "available" and gs["volume_ids"] == sorted(ids) and gs["tenant"] == ta
    members = gs["snapshots"]
    assert [m["volume_id"] for m in members] == sorted(ids)
    assert all(m["group_snapshot_id"] == gs["id"] and m["status"] == "available" for m in members)
    assert _snapshot_files(prov) == sorted(f"{m['id']}.img" for m in members)
    assert created == ["io.berth.group_snapshot.created.v1"] + ["io.berth.snapshot.created.v1"] * 2

    # Idempotent by name (the volumes in any order); another set under the name is refused.
    again = await _group(prov, tok, "nightly", ids)
    assert again["id"] == gs["id"] and again["snapshots"] == members
    r = await prov.http.post(GS, json={"name": "nightly", "volume_ids": ids[:1]}, headers=h)
    assert_problem(r, 409, "already_exists")

    # Members are snapshots: listed, restorable, but deleted only with their group.
    r = await prov.http.get("/v1/snapshots", params={"volume_id": ids[0]}, headers=h)
    assert [s["id"] for s in r.json()["items"]] == [m["id"] for m in members if m["volume_id"] == ids[0]]
    restored = await create_volume(prov, tok, "db-0-restored", source_snapshot_id=members[0]["id"])
    assert restored["source_snapshot_id"] == members[0]["id"]
    r = await prov.http.delete(f"/v1/snapshots/{members[0]['id']}", headers=h)
    assert_problem(r, 409, "failed_precondition", "snapshot_in_group")
    r = await prov.http.delete(f"/v1/volumes/{ids[0]}", headers=h)
    assert_problem(r, 409, "failed_precondition", "volume_has_snapshots")

    r = await prov.http.get(GS, params={"limit": 1}, headers=h)
    assert [g["id"] for g in r.json()["items"]] == [gs["id"]] and r.json()["next_token"] is None
    assert (await prov.http.get(f"{GS}/{gs['id']}", headers=prov.auth(prov.tenants.b))).status_code == 404

    async with EventTap(prov.bus.nc, f"berth.events.{ta}.>") as tap:
        assert (await prov.http.delete(f"{GS}/{gs['id']}", headers=h)).status_code == 204
        deleted = await _wait_snapshot_events(tap, 3)
    assert deleted == ["io.berth.group_snapshot.deleted.v1"] + ["io.berth.snapshot.deleted.v1"] * 2
    assert _snapshot_files(prov) == []
    assert (await prov.http.get(f"{GS}/{gs['id']}", headers=h)).status_code == 404
    assert (await prov.http.delete(f"{GS}/{gs['id']}", headers=h)).status_code == 404
    assert (await prov.http.delete(f"/v1/volumes/{ids[0]}", headers=h)).status_code == 204


async def test_group_snapshot_over_the_bus(prov: Provisioner) -> None:
    tok = prov.tenants.a
    ids = [(await create_volume(prov, tok, f"q-{i}"))["id"] for i in range(3)]
    body = {"name": "bus-group", "volume_ids": ids}
    gs = await prov.bus.request("berth.provisioner.group_snapshot.create", body, token=tok)
    assert gs["status"] == "available" and len(gs["snapshots"]) == 3
    got = await prov.bus.request("berth.provisioner.group_snapshot.get", {"id": gs["id"]}, token=tok)
    assert got == gs
    listed = await prov.bus.request("berth.provisioner.group_snapshot.list", {}, token=tok)
    assert [g["id"] for g in listed["items"]] == [gs["id"]]
    await prov.bus.request("berth.provisioner.group_snapshot.delete", {"id": gs["id"]}, token=tok)
    assert (await prov.bus.request("berth.provisioner.group_snapshot.list", {}, token=tok))["items"] == []


async def test_an_admin_snapshots_a_tenants_volumes_for_the_tenant(prov: Provisioner) -> None:
    admin = prov.tenants.admin
    ids = [(await create_volume(prov, prov.tenants.a, f"app-{i}"))["id"] for i in range(2)]
    gs = await _group(prov, admin, "by-admin", ids)
    assert gs["tenant"] == prov.tenants.tenant_a and {m["tenant"] for m in gs["snapshots"]} == {gs["tenant"]}
    r = await prov.http.get(GS, headers=prov.auth(prov.tenants.a))
    assert [g["id"] for g in r.json()["items"]] == [gs["id"]]
    theirs = (await create_volume(prov, prov.tenants.b, "other-tenant"))["id"]
    r = await prov.http.post(GS, json={"name": "mixed", "volume_ids": [ids[0], theirs]}, headers=prov.auth(admin))
    assert_problem(r, 409, "failed_precondition", "volumes_not_groupable")
    assert (await prov.http.delete(f"{GS}/{gs['id']}", headers=prov.auth(admin))).status_code == 204


async def test_refusals_change_nothing(prov: Provisioner) -> None:
    a, b = prov.tenants.a, prov.tenants.b
    mine = (await create_volume(prov, a, "mine"))["id"]
    theirs = (await create_volume(prov, b, "theirs"))["id"]
    before = await whole_state(prov)
    cases = [
        ({"name": "g", "volume_ids": [mine, theirs]}, 404, "not_found", "volume_not_found"),  # b's, unseen by a
        ({"name": "g", "volume_ids": [mine, mine]}, 422, None, None),
        ({"name": "g", "volume_ids": []}, 422, None, None),
    ]
    for body, status, code, reason in cases:
        r = await prov.http.post(GS, json=body, headers=prov.auth(a))
        if code:
            assert_problem(r, status, code, reason)
        else:
            assert r.status_code == status, r.text

    # Volumes on two clusters: one cut is made on one cluster.
    admin = prov.auth(prov.tenants.admin)
    root = str(prov.settings.data_dir / "clusters" / "second")
    cluster = {"name": "second", "config": {"root": root}, "volume_types": ["standard"], "capacity_gib": 100}
    r = await prov.http.post("/v1/clusters", json=cluster, headers=admin)
    assert r.status_code == 201, r.text
    first = await _cluster_of(prov, mine)
    r = await prov.http.patch(f"/v1/clusters/{first}", json={"state": "draining"}, headers=admin)
    assert r.status_code == 200, r.text
    other = (await create_volume(prov, a, "elsewhere"))["id"]
    before = await whole_state(prov)
    r = await prov.http.post(GS, json={"name": "g", "volume_ids": [mine, other]}, headers=prov.auth(a))
    assert_problem(r, 409, "failed_precondition", "volumes_not_groupable")
    assert await whole_state(prov) == before


async def _cluster_of(prov: Provisioner, volume_id: str) -> str:
    r = await prov.http.get(f"/v1/volumes/{volume_id}", headers=prov.auth(prov.tenants.admin))
    return str(r.json()["cluster_id"])


async def test_a_backend_without_group_snapshots_is_refused(prov: Provisioner, ceph: CephCluster) -> None:
    """CephFS has no group snapshots here: refused up front, before any record."""
    await register_ceph(prov.http, prov.tenants.admin, ceph, "cephfs")
    tok = prov.tenants.a
    vid = (await create_volume(prov, tok, "shared-fs", volume_type=TYPES["cephfs"]))["id"]
    before = await whole_state(prov)
    r = await prov.http.post(GS, json={"name": "g", "volume_ids": [vid]}, headers=prov.auth(tok))
    body = assert_problem(r, 409, "failed_precondition", "group_snapshot_unsupported")
    assert "cephfs backend cannot snapshot several volumes" in body["detail"]
    assert await whole_state(prov) == before
    assert (await prov.http.delete(f"/v1/volumes/{vid}", headers=prov.auth(tok))).status_code == 204

"""Storage clusters of kind `rbd` and `cephfs` through the provisioner's HTTP API, checked
on the real Ceph (the session's `ceph` fixture) through the bindings: what the API says
happened is what the pool and the file system hold."""

from __future__ import annotations

from typing import Any

import pytest
from ceph_clusters import GIB, TYPES, fs_mgr, fs_subvolumes, rbd_berth_images, rbd_image, rbd_trash, register_ceph
from provisioner_checks import assert_problem
from provisioner_harness import Provisioner

from berth_shared.backends import ceph_bindings
from berth_shared.backends.rbd import META_VOLUME
from berth_testing.ceph import RBD_POOL, CephCluster

VOLUMES, SNAPSHOTS = "/v1/volumes", "/v1/snapshots"


async def _create(prov: Provisioner, token: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await prov.http.post(VOLUMES, json=body, headers=prov.auth(token))
    assert r.status_code == 201, r.text
    vol: dict[str, Any] = r.json()
    assert vol["status"] == "available", vol
    return vol


async def _snapshot(prov: Provisioner, token: str, name: str, volume_id: str) -> dict[str, Any]:
    r = await prov.http.post(SNAPSHOTS, json={"name": name, "volume_id": volume_id}, headers=prov.auth(token))
    assert r.status_code == 201, r.text
    snap: dict[str, Any] = r.json()
    assert snap["status"] == "available", snap
    return snap


async def _delete(prov: Provisioner, token: str, path: str) -> None:
    r = await prov.http.delete(path, headers=prov.auth(token))
    assert r.status_code == 204, r.text


async def test_rbd_cluster_volume_lifecycle(prov: Provisioner, ceph: CephCluster) -> None:
    rbd = ceph_bindings.rbd()
    tok = prov.tenants.a
    cluster = await register_ceph(prov.http, prov.tenants.admin, ceph, "rbd")
    assert cluster["backend"] == "rbd" and "config" not in cluster
    listed = (await prov.http.get("/v1/clusters", headers=prov.auth(prov.tenants.admin))).json()["items"]
    (seen,) = [c for c in listed if c["id"] == cluster["id"]]
    assert seen["backend_total_bytes"] >= seen["backend_free_bytes"] > 0, "pool stats through librados"

    vol = await _create(prov, tok, {"name": "pg-0", "size_gib": 1, "volume_type": TYPES["rbd"]})
    assert vol["cluster_id"] == cluster["id"]
    with rbd_image(ceph, vol["id"]) as img:
        assert img.size() == GIB
        assert img.metadata_get(META_VOLUME) == vol["id"], "the image names its Berth record"
    # Data through librbd, as a node would write it.
    with ceph.client().open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, vol["id"]) as img:
        img.write(b"row 1".ljust(4096, b"\0"), 0)

    r = await prov.http.post(f"{VOLUMES}/{vol['id']}/expand", json={"size_gib": 2}, headers=prov.auth(tok))
    assert r.status_code == 200 and r.json()["size_gib"] == 2, r.text
    with rbd_image(ceph, vol["id"]) as img:
        assert img.size() == 2 * GIB

    snap = await _snapshot(prov, tok, "pg-0-s1", vol["id"])
    with rbd_image(ceph, vol["id"]) as img:
        assert [s["name"] for s in img.list_snaps()] == [snap["id"]]
        assert img.is_protected_snap(snap["id"])

    restored = await _create(
        prov, tok, {"name": "pg-0-r", "size_gib": 3, "volume_type": TYPES["rbd"], "source_snapshot_id": snap["id"]}
    )
    cloned = await _create(
        prov, tok, {"name": "pg-0-c", "size_gib": 2, "volume_type": TYPES["rbd"], "source_volume_id": vol["id"]}
    )
    for v, size in ((restored, 3), (cloned, 2)):
        assert v["cluster_id"] == cluster["id"], "a copy stays on its source's cluster"
        with rbd_image(ceph, v["id"]) as img:
            assert img.size() == size * GIB and img.read(0, 5) == b"row 1"
            assert img.get_parent_image_spec()["image_name"] == vol["id"], "copy-on-write clone"

    # Snapshots block the delete (CSI: delete them first); deleting one gives its clones their own data.
    r = await prov.http.delete(f"{VOLUMES}/{vol['id']}", headers=prov.auth(tok))
    assert_problem(r, 409, "failed_precondition", "volume_has_snapshots")
    await _delete(prov, tok, f"{SNAPSHOTS}/{snap['id']}")
    with rbd_image(ceph, restored["id"]) as img:
        assert img.read(0, 5) == b"row 1"
        with pytest.raises(rbd.ImageNotFound):
            img.get_parent_image_spec()
    with rbd_image(ceph, vol["id"]) as img:
        assert snap["id"] not in [s["name"] for s in img.list_snaps()]

    ours = {vol["id"], restored["id"], cloned["id"]}
    assert ours <= set(rbd_berth_images(ceph).values())
    for v in (cloned, restored, vol):
        await _delete(prov, tok, f"{VOLUMES}/{v['id']}")
    assert not ours & set(rbd_berth_images(ceph).values()), "every image went with its record"
    assert not ours & set(rbd_trash(ceph))
    r = await prov.http.get(f"/v1/quotas/{prov.tenants.tenant_a}", headers=prov.auth(tok))
    assert (r.json()["used_volumes"], r.json()["used_gigabytes"]) == (0, 0)


async def test_rbd_delete_of_a_volume_in_use_is_refused(prov: Provisioner, ceph: CephCluster) -> None:
    """A volume whose image still has a watcher (mapped on some host) is not deleted: the
    client gets a clear in-use error naming the watcher, and can delete it once it is free."""
    rbd, rados = ceph_bindings.rbd(), ceph_bindings.rados()
    tok = prov.tenants.a
    await register_ceph(prov.http, prov.tenants.admin, ceph, "rbd")
    vol = await _create(prov, tok, {"name": "busy", "size_gib": 1, "volume_type": TYPES["rbd"]})
    other = rados.Rados(conffile=str(ceph.conf), rados_id=ceph.user, conf={"keyring": str(ceph.keyring)})
    other.connect(timeout=20)
    try:
        with other.open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, vol["id"]):
            r = await prov.http.delete(f"{VOLUMES}/{vol['id']}", headers=prov.auth(tok))
            body = assert_problem(r, 409, "failed_precondition", "volume_in_use")
            assert other.get_addrs() in body["detail"]
            assert vol["id"] in rbd_berth_images(ceph).values()
    finally:
        other.shutdown()
    r = await prov.http.get(f"{VOLUMES}/{vol['id']}", headers=prov.auth(tok))
    assert r.json()["status"] == "error", "kept, and visibly not deleted"
    await _delete(prov, tok, f"{VOLUMES}/{vol['id']}")
    assert vol["id"] not in rbd_berth_images(ceph).values()


async def test_cephfs_cluster_volume_lifecycle(prov: Provisioner, ceph: CephCluster) -> None:
    """Subvolumes in one subvolume group per tenant, the quota as the volume size."""
    a, b = prov.tenants.a, prov.tenants.b
    group_a, group_b = f"berth-{prov.tenants.tenant_a}", f"berth-{prov.tenants.tenant_b}"
    cluster = await register_ceph(prov.http, prov.tenants.admin, ceph, "cephfs")
    assert cluster["backend"] == "cephfs"

    vol = await _create(prov, a, {"name": "shared-0", "size_gib": 1, "volume_type": TYPES["cephfs"]})
    other = await _create(prov, b, {"name": "shared-0", "size_gib": 1, "volume_type": TYPES["cephfs"]})
    subs = fs_subvolumes(ceph, group_a)
    assert list(subs) == [vol["id"]] and subs[vol["id"]]["bytes_quota"] == GIB
    assert list(fs_subvolumes(ceph, group_b)) == [other["id"]], "each tenant in its own group"

    r = await prov.http.post(f"{VOLUMES}/{vol['id']}/expand", json={"size_gib": 2}, headers=prov.auth(a))
    assert r.status_code == 200, r.text
    assert fs_subvolumes(ceph, group_a)[vol["id"]]["bytes_quota"] == 2 * GIB

    snap = await _snapshot(prov, a, "shared-0-s", vol["id"])
    snaps = fs_mgr(ceph, "fs subvolume snapshot ls", sub_name=vol["id"], group_name=group_a)
    assert [s["name"] for s in snaps] == [snap["id"]]
    restored = await _create(
        prov, a, {"name": "shared-0-r", "size_gib": 3, "volume_type": TYPES["cephfs"], "source_snapshot_id": snap["id"]}
    )
    subs = fs_subvolumes(ceph, group_a)
    assert set(subs) == {vol["id"], restored["id"]}, "the copy lands in its tenant's group"
    assert subs[restored["id"]]["bytes_quota"] == 3 * GIB

    r = await prov.http.delete(f"{VOLUMES}/{vol['id']}", headers=prov.auth(a))
    assert_problem(r, 409, "failed_precondition", "volume_has_snapshots")
    await _delete(prov, a, f"{SNAPSHOTS}/{snap['id']}")
    for token, v in ((a, restored), (a, vol), (b, other)):
        await _delete(prov, token, f"{VOLUMES}/{v['id']}")
    assert fs_subvolumes(ceph, group_a) == {} and fs_subvolumes(ceph, group_b) == {}

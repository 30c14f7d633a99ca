from __future__ import annotations

import os
from pathlib import Path

from provisioner_harness import Provisioner


async def test_http_lifecycle_create_get_list_expand_snapshot_restore_delete(prov: Provisioner) -> None:
    h = prov.auth(prov.tenants.a)
    r = await prov.http.post("/v1/volumes", json={"name": "db-0", "size_gib": 2, "volume_type": "standard"}, headers=h)
    assert r.status_code == 201, r.text
    vol = r.json()
    assert vol["status"] == "available" and vol["tenant"] == prov.tenants.tenant_a and vol["size_gib"] == 2
    path = prov.settings.data_dir / "clusters" / "local" / "volumes" / f"{vol['id']}.img"
    assert path.stat().st_size == 2 * 1024**3
    assert path.stat().st_blocks == 0, "thin: nothing written yet"

    r = await prov.http.get(f"/v1/volumes/{vol['id']}", headers=h)
    assert r.status_code == 200 and r.json()["id"] == vol["id"]
    r = await prov.http.get("/v1/volumes", headers=h)
    assert [v["id"] for v in r.json()["items"]] == [vol["id"]]

    r = await prov.http.post(f"/v1/volumes/{vol['id']}/expand", json={"size_gib": 3}, headers=h)
    assert r.status_code == 200 and r.json()["size_gib"] == 3
    assert path.stat().st_size == 3 * 1024**3

    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(b"hello berth")
    r = await prov.http.post("/v1/snapshots", json={"name": "db-0-snap", "volume_id": vol["id"]}, headers=h)
    assert r.status_code == 201, r.text
    snap = r.json()
    r = await prov.http.post(
        "/v1/volumes",
        json={"name": "db-0-restore", "size_gib": 3, "volume_type": "standard", "source_snapshot_id": snap["id"]},
        headers=h,
    )
    assert r.status_code == 201, r.text
    restored = prov.settings.data_dir / "clusters" / "local" / "volumes" / f"{r.json()['id']}.img"
    with open(restored, "rb") as f:
        f.seek(4096)
        assert f.read(11) == b"hello berth"

    r = await prov.http.delete(f"/v1/volumes/{vol['id']}", headers=h)
    assert r.status_code == 409 and r.json()["reason"] == "volume_has_snapshots"
    assert (await prov.http.delete(f"/v1/snapshots/{snap['id']}", headers=h)).status_code == 204
    assert (await prov.http.delete(f"/v1/volumes/{vol['id']}", headers=h)).status_code == 204
    assert not path.exists()
    assert (await prov.http.get(f"/v1/volumes/{vol['id']}", headers=h)).status_code == 404


async def test_bus_commands_mirror_http(prov: Provisioner) -> None:
    tok = prov.tenants.a
    vol = await prov.bus.request(
        "berth.provisioner.volume.create", {"name": "q-0", "size_gib": 1, "volume_type": "standard"}, token=tok
    )
    assert vol["status"] == "available"
    got = await prov.bus.request("berth.provisioner.volume.get", {"id": vol["id"]}, token=tok)
    assert got == vol
    listed = await prov.bus.request("berth.provisioner.volume.list", {}, token=tok)
    assert [v["id"] for v in listed["items"]] == [vol["id"]]
    await prov.bus.request("berth.provisioner.volume.delete", {"id": vol["id"]}, token=tok)
    assert os.listdir(Path(prov.settings.data_dir) / "clusters" / "local" / "volumes") == []

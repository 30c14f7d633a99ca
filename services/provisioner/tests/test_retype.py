"""Retype: a volume moves to another volume type in place, on its own cluster, which must
serve the type; the record and its `volume.retyped` event are one transaction; the same
request again changes nothing; bad input is refused before anything changes."""

from __future__ import annotations

import pytest
from provisioner_checks import VOLUMES, EventTap, assert_problem, create_volume, local_cluster, whole_state
from provisioner_harness import Provisioner
from test_events import check_envelope

from berth_shared.errors import InvalidArgument, NotFound


async def _types(prov: Provisioner, served: list[str], *also: str) -> None:
    """Volume types `served` by the local cluster, and `also` some it does not serve."""
    admin = prov.auth(prov.tenants.admin)
    for name in [*served, *also]:
        r = await prov.http.post("/v1/volume-types", json={"name": name}, headers=admin)
        assert r.status_code in (200, 201), r.text
    local = await local_cluster(prov)
    r = await prov.http.patch(
        f"/v1/clusters/{local['id']}", json={"volume_types": ["standard", *served]}, headers=admin
    )
    assert r.status_code == 200, r.text


async def test_retype_in_place_with_its_event_once(prov: Provisioner) -> None:
    await _types(prov, ["gold"])
    h = prov.auth(prov.tenants.a)
    vol = await create_volume(prov, prov.tenants.a, "db-0", 2)
    data_file = prov.settings.data_dir / "clusters" / "local" / "volumes" / f"{vol['id']}.img"
    before = data_file.stat()
    async with EventTap(prov.bus.nc, f"berth.events.{prov.tenants.tenant_a}.volume.retyped") as tap:
        r = await prov.http.post(f"{VOLUMES}/{vol['id']}/retype", json={"volume_type": "gold"}, headers=h)
        assert r.status_code == 200, r.text
        assert (r.json()["volume_type"], r.json()["status"], r.json()["cluster_id"]) == (
            "gold",
            "available",
            vol["cluster_id"],
        )
        # Again, over HTTP and over the bus: the same answer, no second event.
        again = await prov.http.post(f"{VOLUMES}/{vol['id']}/retype", json={"volume_type": "gold"}, headers=h)
        assert again.json() == r.json()
        reply = await prov.bus.request(
            "berth.provisioner.volume.retype", {"id": vol["id"], "volume_type": "gold"}, token=prov.tenants.a
        )
        assert reply["volume_type"] == "gold" and reply["updated_at"] == r.json()["updated_at"]
        # Back over the bus; the barrier is its event.
        await prov.bus.request(
            "berth.provisioner.volume.retype", {"id": vol["id"], "volume_type": "standard"}, token=prov.tenants.a
        )
        await tap.wait_count(2)
    assert len(tap.msgs) == 2, tap.types()
    first = check_envelope(tap, 0, prov.tenants.tenant_a, "volume", "retyped", vol["id"])
    second = check_envelope(tap, 1, prov.tenants.tenant_a, "volume", "retyped", vol["id"])
    assert (first["previous_type"], first["volume_type"]) == ("standard", "gold")
    assert (second["previous_type"], second["volume_type"]) == ("gold", "standard")
    after = data_file.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size), "the data never moved"


async def test_bad_retypes_change_nothing(prov: Provisioner) -> None:
    await _types(prov, ["gold"], "archive")
    vol = await create_volume(prov, prov.tenants.a, "db-1")
    url = f"{VOLUMES}/{vol['id']}/retype"
    before = await whole_state(prov)
    h = prov.auth(prov.tenants.a)
    r = await prov.http.post(url, json={"volume_type": "platinum"}, headers=h)
    assert "gold" in assert_problem(r, 400, "invalid_argument", "unknown_volume_type")["valid_types"]
    r = await prov.http.post(url, json={"volume_type": "archive"}, headers=h)
    problem = assert_problem(r, 400, "invalid_argument", "type_not_on_cluster")
    assert problem["valid_types"] == ["gold", "standard"] and "never moves data" in problem["detail"]
    r = await prov.http.post(url, json={"volume_type": "gold"}, headers=prov.auth(prov.tenants.b))
    assert_problem(r, 404, "not_found", "volume_not_found")
    r = await prov.http.post(url, json={"volume_type": "bad type!"}, headers=h)
    assert_problem(r, 422, "invalid_argument", "validation_failed")
    with pytest.raises(NotFound):
        await prov.bus.request(
            "berth.provisioner.volume.retype", {"id": "vol-nope", "volume_type": "gold"}, token=prov.tenants.a
        )
    with pytest.raises(InvalidArgument):
        await prov.bus.request(
            "berth.provisioner.volume.retype", {"id": vol["id"], "volume_type": "archive"}, token=prov.tenants.a
        )
    assert await whole_state(prov) == before

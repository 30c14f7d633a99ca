"""kill -9 of the provisioner between Cinder's create and Berth's commit, on a real Cinder
(RBD driver on the real Ceph): after a restart, Cinder's Berth volumes and the
provisioner's records match one to one, and the client's retry makes nothing new."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from berth_procs import ServiceProcess, settled
from test_ceph_crash import _crash_on, _volumes

from berth_shared.backends.openstack_common import META_VOLUME
from berth_testing import Tenants, eventually
from berth_testing.openstack import OpenStack

pytestmark = pytest.mark.slow
VTYPE = "cinder-ssd"


def _cinder_volumes(openstack: OpenStack, tenant: str) -> dict[str, str]:
    """Cinder volume id -> Berth volume id, for this tenant's Berth volumes."""
    conn = openstack.connect("berth")
    try:
        return {
            v.id: v.metadata[META_VOLUME]
            for v in conn.block_storage.volumes(details=True)
            if (v.metadata or {}).get("berth_tenant") == tenant and META_VOLUME in v.metadata
        }
    finally:
        conn.close()


async def _register(http: httpx.AsyncClient, openstack: OpenStack) -> None:
    r = await http.post("/v1/volume-types", json={"name": VTYPE, "description": "replicated SSD (Cinder, RBD)"})
    assert r.status_code == 201, r.text
    body = {
        "name": "os-az1-ssd",
        "backend": "cinder",
        "config": openstack.cinder_config("ceph-ssd"),
        "volume_types": [VTYPE],
        "zone": "default",
        "capacity_gib": 64,
    }
    r = await http.post("/v1/clusters", json=body)
    assert r.status_code == 201, r.text


# Cinder answered the create, Berth had not waited for it nor committed (the generic
# `volume.create.after_backend` point is covered on RBD and CephFS by test_ceph_crash).
@pytest.mark.parametrize("point", ["cinder.create.after_request"])
async def test_kill_between_cinder_create_and_commit(
    point: str, service_process: Callable[..., ServiceProcess], tenants: Tenants, openstack: OpenStack
) -> None:
    proc = service_process()
    proc.start(crash_at=point)
    await proc.wait_ready()
    async with proc.client(tenants.admin) as admin:
        await _register(admin, openstack)
    spec = {"name": "db-0", "size_gib": 1, "volume_type": VTYPE}
    async with proc.client(tenants.a) as http:
        await _crash_on(proc, lambda: http.post("/v1/volumes", json=spec))
        left = _cinder_volumes(openstack, tenants.tenant_a)
        assert len(left) == 1, left  # Cinder made it; Berth has not committed

        proc.start()
        await proc.wait_ready()
        vols = await eventually(
            lambda: _volumes(http),
            lambda vs: list(vs.values()) == ["available"],
            what="the interrupted create",
            within=90,
        )
        (vid,) = vols
        r = await http.post("/v1/volumes", json=spec)
        assert r.status_code == 201 and r.json()["id"] == vid, r.text
        await settled(proc)
        assert list(_cinder_volumes(openstack, tenants.tenant_a).values()) == [vid]  # adopted, not duplicated
        assert _cinder_volumes(openstack, tenants.tenant_a) == left

        r = await http.delete(f"/v1/volumes/{vid}")
        assert r.status_code == 204, r.text
        assert _cinder_volumes(openstack, tenants.tenant_a) == {}

"""The watcher on Cinder and Manila clusters (real Keystone, Cinder with its RBD driver,
Manila with its CephFS driver): a volume or share that no record knows of is found from
the backend's own inventory, quarantined on request and restored over HTTP; a volume the
provisioner made there is no backend orphan. The cloud is shared with the session's other
tests, whose objects this watcher sees as orphans too: the policy stays at report, and only
this test's leak is acted on."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from test_watcher_orphans_ceph import quarantine_and_restore, restore
from watcher_harness import GIB, WatcherStack, watcher_stack

from berth_shared.backends import build_backend
from berth_testing import MakeSettings, Tenants
from berth_testing.openstack import OpenStack


async def _discover(st: WatcherStack, openstack: OpenStack, backend: str, kind: str) -> dict[str, Any]:
    ceph = openstack.ceph.backend_config("rbd", pool="cinder-ssd") if backend == "cinder" else None
    body = {
        "backend": backend,
        "config": {
            "cloud": "berth",
            "clouds_file": str(openstack.clouds_file),
            "ceph": dict(ceph or openstack.ceph.backend_config("cephfs")),
        },
        "types": [kind],
        "name_prefix": f"w{uuid.uuid4().hex[:6]}-",
    }
    r = await st.prov.post("/v1/clusters/discover", json=body, headers=st.h())
    assert r.status_code == 200, r.text
    (cluster,) = r.json()["items"]
    return dict(cluster)


async def _backend_orphans(st: WatcherStack) -> set[str]:
    return {f["resource_id"] for f in await st.findings(kind="backend_orphan")}


async def test_cinder_leak_found_quarantined_and_restored(
    openstack: OpenStack, make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        cluster = await _discover(st, openstack, "cinder", "ceph-ssd")
        backend = build_backend("cinder", openstack.cinder_config("ceph-ssd"))
        recorded = await st.volume("db-0", volume_type=cluster["volume_types"][0])
        leaked = f"vol-{uuid.uuid4().hex}"
        try:
            await backend.create_volume(leaked, GIB, tenant=tenants.tenant_a)
            entry = await quarantine_and_restore(st, cluster, leaked)
            assert recorded["id"] not in await _backend_orphans(st), "a recorded volume is no leak"
            assert leaked not in {i.id for i in await backend.inventory()}
            assert ("volume", leaked) in {(t.kind, t.id) for t in await backend.trash()}
            await restore(st, entry)
            assert leaked in {i.id for i in await backend.inventory()}
        finally:
            await backend.delete_volume(leaked)
            r = await st.prov.delete(f"/v1/volumes/{recorded['id']}", headers=st.h(tenants.a))
            assert r.status_code in (202, 204), r.text
            await backend.close()


async def test_manila_leak_found_quarantined_and_restored(
    openstack: OpenStack, make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        cluster = await _discover(st, openstack, "manila", "cephfs")
        backend = build_backend("manila", openstack.manila_config())
        leaked = f"vol-{uuid.uuid4().hex}"
        try:
            await backend.create_volume(leaked, GIB, tenant=tenants.tenant_a)
            entry = await quarantine_and_restore(st, cluster, leaked)
            assert leaked not in {i.id for i in await backend.inventory()}
            await restore(st, entry)
            assert leaked in {i.id for i in await backend.inventory()}
        finally:
            await backend.delete_volume(leaked)
            await backend.close()

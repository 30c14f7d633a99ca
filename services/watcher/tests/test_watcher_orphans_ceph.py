"""Orphans on the real Ceph fixture: an RBD image and a CephFS subvolume no record knows of
are found, quarantined on request (RBD: the image moves to the pool's trash; CephFS: its
authorisations are revoked and it leaves the inventory) and restored over HTTP, data and
all. The session's pool is shared with other tests, whose images this watcher sees as
orphans too: the policy stays at report, and only this test's leak is acted on."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ceph_clusters import fs_subvolumes, rbd_berth_images, rbd_trash, register_ceph
from watcher_harness import GIB, WatcherStack, watcher_stack

from berth_shared.backends import build_backend
from berth_testing import MakeSettings, Tenants
from berth_testing.ceph import CephCluster


async def quarantine_and_restore(st: WatcherStack, cluster: dict[str, Any], leaked: str) -> dict[str, Any]:
    """Find the leak, quarantine it on request, and return the entry (restored afterwards)."""
    run = await st.run("orphans")
    assert all(s["ok"] for s in run["sources"]), run["sources"]
    finding = await st.finding_of("backend_orphan", leaked)
    assert finding["cluster_id"] == cluster["id"] and finding["action"] == "report", finding
    assert finding["details"]["actionable"] is True and "leaked" in finding["summary"]
    r = await st.watcher.post(f"/v1/findings/{finding['id']}/quarantine", params={"wait_s": 60}, headers=st.h())
    assert r.status_code == 200, r.text
    entry: dict[str, Any] = r.json()
    assert (entry["object_id"], entry["state"], entry["backend"]) == (leaked, "quarantined", cluster["backend"])
    return entry


async def restore(st: WatcherStack, entry: dict[str, Any]) -> None:
    r = await st.watcher.post(f"/v1/quarantine/{entry['id']}/restore", headers=st.h())
    assert r.status_code == 200 and r.json()["state"] == "restored", r.text
    await st.events.wait("quarantine.restored.v1", object_id=entry["object_id"])


async def test_rbd_leak_to_the_trash_and_back(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        cluster = await register_ceph(st.prov, tenants.admin, ceph, "rbd")
        backend = build_backend("rbd", ceph.backend_config("rbd"))
        leaked = f"vol-{uuid.uuid4().hex}"
        try:
            await backend.create_volume(leaked, GIB)
            entry = await quarantine_and_restore(st, cluster, leaked)
            assert leaked not in rbd_berth_images(ceph).values() and leaked in rbd_trash(ceph)
            assert (await st.finding_of("backend_orphan", leaked))["state"] == "quarantined"
            await restore(st, entry)
            assert leaked in rbd_berth_images(ceph).values() and leaked not in rbd_trash(ceph)
        finally:
            await backend.delete_volume(leaked)
            await backend.close()


async def test_cephfs_leak_quarantined_and_back(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        # Its own group prefix: this cluster sees this test's subvolumes only.
        prefix = f"w{uuid.uuid4().hex[:8]}-"
        cluster = await register_ceph(st.prov, tenants.admin, ceph, "cephfs", group_prefix=prefix)
        backend = build_backend("cephfs", ceph.backend_config("cephfs", group_prefix=prefix))
        leaked = f"vol-{uuid.uuid4().hex}"
        group = f"{prefix}{tenants.tenant_a}"
        try:
            await backend.create_volume(leaked, GIB, tenant=tenants.tenant_a)
            entry = await quarantine_and_restore(st, cluster, leaked)
            assert entry["tenant"] == tenants.tenant_a, "the owner as the backend records it"
            assert leaked in fs_subvolumes(ceph, group), "a CephFS quarantine keeps the subvolume"
            run = await st.run("orphans")
            assert not [a for a in run["actions"] if a["outcome"] == "done"]
            assert (await st.finding_of("backend_orphan", leaked))["state"] == "quarantined", "out of the inventory"
            await restore(st, entry)
            await st.run("orphans")
            assert (await st.finding_of("backend_orphan", leaked))["state"] == "ignored", "back, and wanted"
        finally:
            await backend.delete_volume(leaked)
            await backend.close()

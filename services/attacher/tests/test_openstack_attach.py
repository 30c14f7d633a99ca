"""The attacher on Cinder and Manila clusters (real Keystone, Cinder with its RBD driver,
Manila with its CephFS driver): publish makes the node's Cinder attachment (or Manila
access rule) and hands the node its connection, a refused publish leaves none behind,
unpublish takes it away, and a fence force-detaches the node at Cinder and blocklists it
at Ceph before its volume moves. The clusters come from the cloud's types (discovery)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from attacher_harness import Stack, stack

from berth_shared.backends import build_backend
from berth_shared.backends.cinder import CinderBackend
from berth_shared.backends.manila import ManilaBackend
from berth_testing import MakeSettings, Tenants, eventually
from berth_testing.openstack import OpenStack


async def _discover(st: Stack, openstack: OpenStack, backend: str, types: list[str]) -> dict[str, Any]:
    body = {
        "backend": backend,
        "config": {"cloud": "berth", "clouds_file": str(openstack.clouds_file), "ceph": _ceph(openstack, backend)},
        "types": types,
        "name_prefix": "os-",
    }
    r = await st.prov.post("/v1/clusters/discover", json=body, headers=st.h(st.tenants.admin))
    assert r.status_code == 200, r.text
    return {c["name"]: c for c in r.json()["items"]}


def _ceph(openstack: OpenStack, backend: str) -> dict[str, Any]:
    if backend == "cinder":
        return dict(openstack.ceph.backend_config("rbd", pool="cinder-ssd"))
    return dict(openstack.ceph.backend_config("cephfs"))


async def _alive(st: Stack, node_id: str) -> None:
    await st.agent(node_id)  # heartbeats until the stack stops


async def _publish(st: Stack, vid: str, node: str, mode: str = "single_node_writer") -> Any:
    body = {"volume_id": vid, "node_id": node, "access_mode": mode}
    return await st.att.post("/v1/attachments", json=body, headers=st.h(st.tenants.a))


async def test_cinder_publish_unpublish_and_fence(
    openstack: OpenStack, make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with stack(make_settings, tenants, tmp_path, fence_mode="auto") as st:
        found = await _discover(st, openstack, "cinder", ["ceph-ssd"])
        assert found["os-ceph-ssd"]["backend"] == "cinder" and found["os-ceph-ssd"]["capacity_gib"] > 0
        vol = await st.volume("db-0", volume_type="ceph-ssd")
        cinder = build_backend("cinder", openstack.cinder_config("ceph-ssd"))
        assert isinstance(cinder, CinderBackend)
        try:
            node_a, node_b = f"na-{uuid.uuid4().hex[:6]}", f"nb-{uuid.uuid4().hex[:6]}"
            for n in (node_a, node_b):
                await _alive(st, n)
            r = await _publish(st, vol["id"], node_a)
            assert r.status_code == 201, r.text
            ctx = r.json()["publish_context"]
            assert ctx["backend"] == "cinder" and ctx["driver"] == "rbd" and ctx["pool"] == "cinder-ssd"
            assert len(await cinder.attached_nodes(vol["id"])) == 1

            # Single writer: B is refused and no Cinder attachment of B stays behind.
            r = await _publish(st, vol["id"], node_b)
            assert r.status_code == 409 and r.json()["reason"] == "published_elsewhere", r.text
            assert len(await cinder.attached_nodes(vol["id"])) == 1

            # A is declared down: fenced at Cinder (force-detach) and Ceph, then B gets it.
            r = await st.att.post(f"/v1/nodes/{node_a}/down", json={"reason": "test"}, headers=st.h(tenants.admin))
            assert r.status_code == 200, r.text
            await eventually(lambda: st.node(node_a), lambda n: n["state"] == "fenced", what="A fenced", within=60)
            assert await cinder.attached_nodes(vol["id"]) == []
            r = await st.att.get("/v1/fences", params={"node_id": node_a}, headers=st.h(tenants.admin))
            results = [x for f in r.json()["items"] for c in f["results"].values() for x in c]
            assert any(x.startswith(f"cinder-detach {vol['id']}") for x in results), results
            r = await _publish(st, vol["id"], node_b)
            assert r.status_code == 201, r.text
            assert len(await cinder.attached_nodes(vol["id"])) == 1

            r = await st.att.delete(
                "/v1/attachments", params={"volume_id": vol["id"], "node_id": node_b}, headers=st.h(tenants.a)
            )
            assert r.status_code == 204, r.text
            assert await cinder.attached_nodes(vol["id"]) == []
            r = await st.prov.delete(f"/v1/volumes/{vol['id']}", headers=st.h(tenants.a))
            assert r.status_code == 204, r.text
        finally:
            await cinder.close()


async def test_manila_publish_waits_for_the_access_rule(
    openstack: OpenStack, make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with stack(make_settings, tenants, tmp_path) as st:
        await _discover(st, openstack, "manila", ["cephfs"])
        vol = await st.volume("shared-0", volume_type="cephfs")
        manila = build_backend("manila", openstack.manila_config())
        assert isinstance(manila, ManilaBackend)
        try:
            nodes = [f"nm{i}-{uuid.uuid4().hex[:6]}" for i in (1, 2)]
            for n in nodes:
                await _alive(st, n)
                r = await _publish(st, vol["id"], n, "multi_node_multi_writer")
                assert r.status_code == 201, r.text
                assert r.json()["publish_context"]["path"].startswith("/volumes/")
            rules = await manila.cloud.call(
                "rules", lambda c: list(c.shared_file_system.access_rules(manila._find_share(c, vol["id"])))
            )
            assert {(x.access_to, x.state) for x in rules} == {(f"berth-node-{n}", "active") for n in nodes}
            for n in nodes:
                r = await st.att.delete(
                    "/v1/attachments", params={"volume_id": vol["id"], "node_id": n}, headers=st.h(tenants.a)
                )
                assert r.status_code == 204, r.text
            r = await st.prov.delete(f"/v1/volumes/{vol['id']}", headers=st.h(tenants.a))
            assert r.status_code == 204, r.text
        finally:
            await manila.close()

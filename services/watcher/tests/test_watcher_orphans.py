"""Orphans end to end: real NATS, the provisioner and attacher with the file cluster, the
fake Kubernetes API under the official client, the watcher. Each kind of orphan is found,
published as an event and reported with what, since when and what to do; only complete
runs decide; the inventories it reads page over the bus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from watcher_harness import WatcherStack, watcher_stack

from berth_shared.errors import PermissionDenied
from berth_testing import MakeSettings, Tenants, eventually
from berth_watcher.sources.inventory import BusInventory


async def test_inventories_page_over_the_bus_for_admins_only(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        made = [await st.volume(f"a-{i}") for i in range(4)] + [await st.volume("b-0", token=tenants.b)]
        r = await st.prov.post("/v1/snapshots", json={"name": "s", "volume_id": made[0]["id"]}, headers=st.h(tenants.a))
        assert r.status_code == 201, r.text
        await st.node("node-1")
        await st.publish(made[1]["id"], "node-1")
        inv = BusInventory(st.bus, tenants.admin, page_size=2, timeout_s=10)
        volumes, report = await inv.volumes()
        assert volumes is not None and report.ok
        assert sorted(v.id for v in volumes) == sorted(v["id"] for v in made), "every tenant's, each once"
        assert (report.items, report.pages) == (5, 3)
        snapshots, report = await inv.snapshots()
        assert snapshots is not None and [s.volume_id for s in snapshots] == [made[0]["id"]]
        grants, report = await inv.attachments()
        assert grants is not None and [(a.volume_id, a.node_id) for a in grants] == [(made[1]["id"], "node-1")]
        clusters, report = await inv.clusters()
        assert clusters is not None and [(c.name, c.backend) for c in clusters] == [("local", "file")]
        assert clusters[0].config["root"] == str(st.cluster_root)
        for subject in (
            "berth.provisioner.inventory.volumes",
            "berth.provisioner.inventory.snapshots",
            "berth.attacher.inventory.attachments",
        ):
            with pytest.raises(PermissionDenied):
                await st.bus.request(subject, {"limit": 10}, token=tenants.a)
        with pytest.raises(PermissionDenied):
            await st.bus.request("berth.provisioner.inventory.clusters", {}, token=tenants.a)


async def setup_every_kind(st: WatcherStack) -> dict[str, str]:
    """One orphan of each kind next to a healthy, fully used volume; their resource ids."""
    k = st.kube
    k.add_node("node-1")
    k.add_node("node-2")
    await st.node("node-1")
    healthy = await st.volume("healthy")
    k.add_pv("pv-healthy", healthy["id"], claim=("apps", "healthy"))
    k.add_pvc("apps", "healthy", "pv-healthy")
    k.add_pod("apps", "db-0", "node-1", ["healthy"])
    k.add_volume_attachment("va-healthy", "pv-healthy", "node-1")
    await st.publish(healthy["id"], "node-1")

    leaked = await st.leak()
    without_pv = await st.volume("no-pv")
    k.add_pv("pv-gone", "vol-00000000gone", claim=("apps", "gone"))
    stale = await st.volume("stale")
    k.add_pv("pv-stale", stale["id"], claim=("apps", "stale"))
    k.add_pvc("apps", "stale", "pv-stale")
    await st.publish(stale["id"], "node-1")  # no pod on node-1 uses apps/stale
    shared = await st.volume("shared")
    k.add_pv("pv-shared", shared["id"], claim=("apps", "shared"))
    k.add_pvc("apps", "shared", "pv-shared")
    k.add_volume_attachment("va-shared-1", "pv-shared", "node-1")
    k.add_volume_attachment("va-shared-2", "pv-shared", "node-2")
    return {
        "backend_orphan": leaked,
        "volume_without_pv": without_pv["id"],
        "pv_volume_missing": "pv-gone",
        "stale_attachment": stale["id"],
        "single_writer_violation": shared["id"],
        "healthy": healthy["id"],
    }


async def test_every_orphan_kind_is_found_reported_and_published(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        ids = await setup_every_kind(st)
        run = await st.run("orphans")
        assert not run["partial"] and all(s["ok"] for s in run["sources"]), run["sources"]
        names = {s["name"] for s in run["sources"]}
        assert {"provisioner/volumes", "attacher/attachments", "backend/local"} <= names
        assert "kubernetes/east/persistentvolumes" in names
        # (PV changes queue runs of their own too: some may have been found already.)
        assert run["findings_open"] == 5
        found = await st.findings()
        by_kind = {f["kind"]: f for f in found}
        assert len(found) == 5 and set(by_kind) == set(ids) - {"healthy"}, found
        stale = by_kind["stale_attachment"]
        assert stale["details"]["volume_id"] == ids["stale_attachment"] and stale["details"]["node_id"] == "node-1"
        for kind, f in by_kind.items():
            want = ids[kind]
            assert want in (f["resource_id"], f["details"].get("volume_id")), (kind, f)
            assert ids["healthy"] not in (f["resource_id"], f["details"].get("volume_id"))
            assert f["state"] == "open" and f["summary"] and f["advice"], f
            assert f["first_seen_at"] <= f["confirmed_at"], "since when"
            assert f["action"] == "report", "reported by default, nothing acted on"
        assert by_kind["single_writer_violation"]["severity"] == "critical"
        assert by_kind["single_writer_violation"]["details"]["writers"] == ["node-1", "node-2"]
        assert "leaked" in by_kind["backend_orphan"]["summary"]
        assert "berth watcher findings quarantine" in by_kind["backend_orphan"]["advice"]
        assert "not referenced by any PersistentVolume" in by_kind["volume_without_pv"]["summary"]
        assert "neither a provisioner record nor a backend object" in by_kind["pv_volume_missing"]["summary"]
        assert "no pod there uses claim apps/stale" in stale["summary"]
        # Each finding is an event, with the finding as its data (tenant-owned ones on their tenant).
        for f in found:
            opened = await st.events.wait("finding.opened.v1", id=f["id"])
            assert len(opened) == 1, f
            # (Its summary may have been refreshed since: a run that saw the leak's file half written.)
            assert (opened[0]["data"]["kind"], opened[0]["data"]["resource_id"]) == (f["kind"], f["resource_id"])
        without_pv = by_kind["volume_without_pv"]
        assert st.events.of("finding.opened.v1", id=without_pv["id"])[0]["berthtenant"] == tenants.tenant_a
        # A tenant sees its own findings only, an admin all.
        r = await st.watcher.get("/v1/findings", headers=st.h(tenants.b))
        assert r.status_code == 200 and r.json()["items"] == []
        r = await st.watcher.get("/v1/findings", headers=st.h(tenants.a))
        assert {f["kind"] for f in r.json()["items"]} >= {"volume_without_pv"}
        assert all(f["tenant"] == tenants.tenant_a for f in r.json()["items"])
        # Nothing was touched: every volume file is where it was.
        for vid in (ids["backend_orphan"], ids["volume_without_pv"], ids["healthy"]):
            assert st.volume_file(vid).exists()
        assert await st.quarantine() == []

        # The next complete run keeps them (no new events); fixing one resolves it.
        st.kube.add_pv("pv-nopv", ids["volume_without_pv"], claim=("apps", "nopv"))
        run = await st.run("orphans")  # (or the run the new PV queued: whichever came first)
        assert run["findings_opened"] == 0 and run["findings_open"] == 4
        assert {f["kind"] for f in await st.findings()} == set(ids) - {"healthy", "volume_without_pv"}
        resolved = await st.events.wait("finding.resolved.v1", id=without_pv["id"])
        assert len(resolved) == 1 and resolved[0]["data"]["state"] == "resolved"
        # With no grace, a run between a volume's create and its PV's may have seen it
        # without one: such a finding was resolved by the next run, never left open.
        still_open = {f["id"] for f in await st.findings()}
        for e in st.events.of("finding.opened.v1"):
            if e["data"]["id"] not in still_open:
                await st.events.wait("finding.resolved.v1", id=e["data"]["id"])
        # Every run is recorded, with the run's own event.
        r = await st.watcher.get("/v1/runs", params={"job": "orphans"}, headers=st.h())
        # (A PV change may have queued one more meanwhile: the finished ones.)
        runs = [x for x in r.json()["items"] if x["status"] not in ("queued", "running")]
        assert len(runs) >= 3 and all(x["started_at"] and x["finished_at"] for x in runs)
        for x in runs:
            await st.events.wait("watcher_run.finished.v1", id=x["id"])


async def test_a_grace_period_and_a_second_sighting_before_a_finding(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path, grace_volume_without_pv_s=3600.0) as st:
        young = await st.volume("young")
        for _ in range(2):
            await st.run("orphans")
            assert await st.findings(kind="volume_without_pv") == [], "a new volume waits out its grace"
        assert st.events.of("finding.opened.v1") == []
        assert young["id"]


async def test_stale_grants_unpublished_by_policy_unless_kubernetes_holds_them(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path, action_stale_attachment="unpublish") as st:
        k = st.kube
        k.add_node("node-1")
        await st.node("node-1")
        # No pod uses either claim; Kubernetes has a VolumeAttachment for one of them (made
        # first: with no grace, any run after its grant must see it).
        k.add_volume_attachment("va-held", "pv-held", "node-1")
        stale, held = await st.volume("stale"), await st.volume("held")
        for name, vol in (("stale", stale), ("held", held)):
            k.add_pv(f"pv-{name}", vol["id"], claim=("apps", name))
            k.add_pvc("apps", name, f"pv-{name}")
            await st.publish(vol["id"], "node-1")

        async def grants(vid: str) -> list[dict[str, Any]]:
            r = await st.att.get("/v1/attachments", params={"volume_id": vid}, headers=st.h())
            assert r.status_code == 200, r.text
            return list(r.json()["items"])

        async def unpublished() -> list[dict[str, Any]]:
            await st.run("orphans")
            return await grants(stale["id"])

        await eventually(unpublished, lambda found: found == [], within=30, what="the stale grant unpublished")
        resolved = await st.events.wait("finding.resolved.v1", kind="stale_attachment")
        assert resolved[0]["data"]["resolution"] == "unpublished by the watcher"
        assert [g["node_id"] for g in await grants(held["id"])] == ["node-1"], "Kubernetes still holds it"
        kept = await st.finding_of("stale_attachment", (await grants(held["id"]))[0]["id"])
        assert kept["details"]["volume_attachment"] is True and "VolumeAttachment" in kept["advice"]

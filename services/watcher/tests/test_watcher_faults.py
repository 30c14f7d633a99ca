"""Faults in the watcher's sources, end to end: the Kubernetes API unreachable or erroring
mid-list, a backend failing mid-scan. Each time the run is marked partial with the source
and why, nothing is acted on from it (no quarantine, no finding made or resolved from the
incomplete source), and the next run, whole again, completes and acts. Runs on demand
over the bus as well as HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from watcher_harness import WatcherStack, watcher_stack

from berth_testing import MakeSettings, Tenants

POLICY = {"action_backend_orphan": "quarantine"}


def failed(run: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["error"] for s in run["sources"] if not s["ok"]}


async def assert_nothing_acted(st: WatcherStack, run: dict[str, Any], leaked: str) -> None:
    assert run["status"] == "partial" and run["partial"] and run["severity"] == "warning", run
    assert [a for a in run["actions"] if a["outcome"] == "done"] == []
    assert run["summary"]["acted"].startswith("no: a source was incomplete")
    assert st.volume_file(leaked).exists() and await st.quarantine(state="quarantined") == []


async def test_kubernetes_unreachable_then_erroring_mid_list(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path, **POLICY) as st:
        k = st.kube
        for i in range(7):  # two pages of PVs (page size 5); another driver's, so no findings
            k.add_pv(f"pv-nfs-{i}", f"share-{i}", driver="nfs.csi.k8s.io")
        k.add_pv("pv-gone", "vol-0000000000gone", claim=("apps", "gone"))
        await st.run("orphans")
        gone = await st.finding_of("pv_volume_missing", "pv-gone")

        await k.go_down()
        k.remove("persistentvolumes", "pv-gone")  # unseen while the API is down
        leaked = await st.leak()
        run = await st.run("orphans", expect="partial")
        assert "Connection refused" in failed(run)["kubernetes/east/persistentvolumes"]
        await assert_nothing_acted(st, run, leaked)
        # Incomplete Kubernetes: the leak is reported (its backend and records were whole) but
        # not actionable, and the PV finding stays: its going was not seen by a whole read.
        assert (await st.finding_of("backend_orphan", leaked))["details"]["actionable"] is False
        assert (await st.finding_of("pv_volume_missing", "pv-gone"))["id"] == gone["id"]
        assert run["findings_resolved"] == 0

        await k.come_back()
        k.fail_list_page, k.fail_list_times = (2, 500), 1
        run = await st.bus.request(
            "berth.watcher.run.start", {"job": "orphans", "wait_s": 30}, token=tenants.admin, timeout=40
        )
        assert "HTTP 500" in failed(run)["kubernetes/east/persistentvolumes"], run["sources"]
        await assert_nothing_acted(st, run, leaked)

        run = await st.run("orphans")  # whole again: it completes and acts
        assert failed(run) == {} and not run["partial"]
        assert [e["object_id"] for e in await st.quarantine()] == [leaked]
        assert st.trash_file(leaked).exists()
        assert [f["resource_id"] for f in await st.findings(kind="pv_volume_missing")] == []


async def test_a_backend_failing_mid_scan(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path, **POLICY) as st:
        first = await st.leak()
        await st.run("orphans")
        assert [e["object_id"] for e in await st.quarantine()] == [first]
        [entry] = await st.quarantine()
        r = await st.watcher.post(f"/v1/quarantine/{entry['id']}/restore", headers=st.h())
        assert r.status_code == 200, r.text
        # An entry the scan cannot read (a symlink loop): it fails part-way through the folder.
        broken = st.cluster_root / "volumes" / "vol-0000000000loop.img"
        os.symlink(broken.name, broken)
        leaked = await st.leak()
        st.volume_file(first).unlink()  # its finding must not resolve from a scan that did not finish
        run = await st.run("orphans", expect="partial")
        assert "Too many levels of symbolic links" in failed(run)["backend/local"], run["sources"]
        await assert_nothing_acted(st, run, leaked)
        # Nothing new from the broken cluster, and nothing resolved (the restored one is ignored).
        assert [(f["resource_id"], f["state"]) for f in await st.findings(kind="backend_orphan")] == [
            (first, "ignored")
        ]
        run_id = run["id"]
        r = await st.watcher.get(f"/v1/runs/{run_id}", headers=st.h())
        assert r.json()["status"] == "partial", "the record says so"
        metrics = (await st.watcher.get("/metrics")).text
        assert 'berth_watcher_source_ok{source="backend/local"} 0.0' in metrics

        broken.unlink()
        run = await st.run("orphans")
        assert failed(run) == {} and not run["partial"]
        assert [e["object_id"] for e in await st.quarantine(state="quarantined")] == [leaked]
        r = await st.watcher.get("/v1/findings", params={"state": "ignored"}, headers=st.h())
        assert r.json()["items"] == [], "the deleted one resolved by a whole scan"

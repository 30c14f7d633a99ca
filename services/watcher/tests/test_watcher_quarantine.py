"""Quarantine end to end on the file cluster: by policy, into its trash folder; restored over
HTTP with the data untouched; purged after the configured time (a recorded volume through
the provisioner); and nothing a PersistentVolume references, Retain and Released ones
included, ever touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from watcher_harness import WatcherStack, watcher_stack

from berth_testing import MakeSettings, Tenants, eventually

# A short grace: it is the second sighting that keeps a run between a volume's create and
# its PV's (the setup below makes many) from taking a volume about to be referenced.
POLICY = {
    "action_backend_orphan": "quarantine",
    "action_volume_without_pv": "quarantine",
    "grace_backend_orphan_s": 0.3,
    "grace_volume_without_pv_s": 0.3,
}


async def quarantined_after_runs(st: WatcherStack, want: set[str]) -> dict[str, dict[str, Any]]:
    """Run orphans until `want` are in quarantine (a second sighting past the grace)."""

    async def entries() -> dict[str, dict[str, Any]]:
        await st.run("orphans")
        return {e["object_id"]: e for e in await st.quarantine()}

    return await eventually(entries, lambda e: set(e) >= want, within=30, what=f"{want} quarantined")


async def test_policy_quarantines_leaks_only_and_restore_puts_them_back(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path, **POLICY) as st:
        k = st.kube
        leaked = await st.leak()
        st.volume_file(leaked).write_bytes(b"precious bytes")
        no_pv = await st.volume("no-pv")
        # What PVs reference is never touched, whatever its state or policy:
        lost_record = await st.leak()  # data whose record was lost, a Retain PV still on it
        k.add_pv("pv-lost", lost_record, phase="Released", reclaim_policy="Retain", claim=("apps", "old"))
        retained = await st.volume("retained")
        k.add_pv("pv-retained", retained["id"], phase="Released", reclaim_policy="Retain", claim=("apps", "r"))
        released = await st.volume("released")  # Released, Delete, not yet past its reclaim TTL
        k.add_pv("pv-released", released["id"], phase="Released", claim=("apps", "d"), phase_since=None)
        bound = await st.volume("bound")
        k.add_pv("pv-bound", bound["id"], claim=("apps", "b"))
        k.add_pvc("apps", "b", "pv-bound")
        protected = [lost_record, retained["id"], released["id"], bound["id"]]

        entries = await quarantined_after_runs(st, {leaked, no_pv["id"]})
        assert set(entries) == {leaked, no_pv["id"]}
        for vid in (leaked, no_pv["id"]):
            assert not st.volume_file(vid).exists() and st.trash_file(vid).exists(), "moved, not deleted"
            e = entries[vid]
            assert e["state"] == "quarantined" and e["backend"] == "file" and e["requested_by"] == "policy"
            kind = "backend_orphan" if vid == leaked else "volume_without_pv"
            finding = await st.finding_of(kind, vid)
            assert (finding["id"], finding["state"]) == (e["finding_id"], "quarantined")
            assert len(await st.events.wait("quarantine.created.v1", object_id=vid)) == 1
        for vid in protected:
            assert st.volume_file(vid).exists(), f"{vid} is referenced by a PV"

        # Its finding may lag the leaks' by a run or two: a scan that met its file mid-create
        # (renamed under it) did not see it, and a sighting starts again.
        async def lost_finding() -> list[dict[str, Any]]:
            await st.run("orphans")
            return [f for f in await st.findings(kind="backend_orphan") if f["resource_id"] == lost_record]

        [lost] = await eventually(lost_finding, lambda found: len(found) == 1, within=30, what="the lost record")
        assert lost["severity"] == "critical" and lost["action"] == "report"
        assert lost["details"]["pv"] == "pv-lost" and "Do not delete the PV" in lost["advice"]
        r = await st.watcher.post(f"/v1/findings/{lost['id']}/quarantine", headers=st.h())
        assert r.status_code == 409 and r.json()["reason"] == "not_actionable", r.text
        assert await st.findings(kind="volume_without_pv") == [await st.finding_of("volume_without_pv", no_pv["id"])]

        # Restored over HTTP: the same bytes back where they were, and never taken again.
        r = await st.watcher.post(f"/v1/quarantine/{entries[leaked]['id']}/restore", headers=st.h())
        assert r.status_code == 200 and r.json()["state"] == "restored", r.text
        assert st.volume_file(leaked).read_bytes()[:14] == b"precious bytes" and not st.trash_file(leaked).exists()
        assert len(await st.events.wait("quarantine.restored.v1", object_id=leaked)) == 1
        assert (await st.finding_of("backend_orphan", leaked))["state"] == "ignored"
        r = await st.watcher.post(f"/v1/quarantine/{entries[leaked]['id']}/restore", headers=st.h())
        assert r.status_code == 409, "restored already"
        run = await st.run("orphans")
        assert not [a for a in run["actions"] if a["outcome"] == "done"], "no action runs twice"
        assert st.volume_file(leaked).exists() and len(await st.events.wait("quarantine.created.v1")) == 2
        for vid in protected:
            assert st.volume_file(vid).exists()
        r = await st.watcher.post(f"/v1/quarantine/{entries[no_pv['id']]['id']}/restore", headers=st.h(tenants.a))
        assert r.status_code == 403, "an admin's call"


async def test_purged_after_the_quarantine_time(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path, quarantine_s=1.0, **POLICY) as st:
        leaked = await st.leak()
        no_pv = await st.volume("no-pv")
        first = await quarantined_after_runs(st, {leaked, no_pv["id"]})

        async def purged() -> set[str]:
            await st.run("orphans")
            return {e["object_id"] for e in await st.quarantine(state="purged")}

        await eventually(purged, lambda ids: ids == {leaked, no_pv["id"]}, within=30, what="both purged")
        for vid in (leaked, no_pv["id"]):
            assert not st.trash_file(vid).exists() and not st.volume_file(vid).exists()
            assert len(await st.events.wait("quarantine.purged.v1", object_id=vid)) == 1
            assert (
                st.events.of("quarantine.purged.v1", object_id=vid)[0]["data"]["purged_at"] >= first[vid]["purge_after"]
            ), "not before its time"
        # The recorded volume went through the provisioner: its record, quota and cluster figures.
        r = await st.prov.get(f"/v1/volumes/{no_pv['id']}", headers=st.h(tenants.a))
        assert r.status_code == 404, r.text
        assert len(await st.events.wait("volume.deleted.v1", id=no_pv["id"])) == 1
        assert await st.findings() == [], "resolved once purged"

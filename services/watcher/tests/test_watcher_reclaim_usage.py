"""Reclaim and usage end to end: a Released PV with the Delete policy past its TTL (from its
lastPhaseTransitionTime) has its volume deleted through the provisioner, then the PV; usage
per tenant, cluster and volume type with a forecast, metrics, and a threshold breach event."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from watcher_harness import GIB, watcher_stack

from berth_testing import MakeSettings, Tenants

MIB = 1 << 20


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_released_delete_pvs_past_their_ttl_are_reclaimed_through_the_provisioner(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path, reclaim_ttl_s=3600.0) as st:
        k = st.kube
        now = datetime.now(UTC).isoformat()
        vols = {name: await st.volume(name) for name in ("old", "recent", "retain", "untimed", "granted", "bound")}
        k.add_pv("pv-old", vols["old"]["id"], phase="Released", claim=("apps", "old"))  # released 2026-01-01
        k.add_pv("pv-recent", vols["recent"]["id"], phase="Released", claim=("apps", "r"), phase_since=now)
        k.add_pv("pv-retain", vols["retain"]["id"], phase="Released", reclaim_policy="Retain", claim=("apps", "k"))
        k.add_pv("pv-untimed", vols["untimed"]["id"], phase="Released", claim=("apps", "u"), phase_since=None)
        k.add_pv("pv-granted", vols["granted"]["id"], phase="Released", claim=("apps", "g"))
        k.add_pv("pv-bound", vols["bound"]["id"], claim=("apps", "b"))
        await st.node("node-1")
        await st.publish(vols["granted"]["id"], "node-1")

        # (A Released PV queues a reclaim run of its own: this one or that one acted.)
        run = await st.run("reclaim")
        skipped = [a for a in run["actions"] if a["outcome"] == "skipped"]
        assert [a["target"] for a in skipped] == ["pv-granted"] and "still granted" in skipped[0]["detail"]
        old = vols["old"]["id"]
        r = await st.prov.get(f"/v1/volumes/{old}", headers=st.h(tenants.a))
        assert r.status_code == 404, "deleted through the provisioner"
        assert len(await st.events.wait("volume.deleted.v1", id=old)) == 1
        assert not st.volume_file(old).exists()
        assert "/pv-old" not in k.objects["persistentvolumes"], "then the PV"
        [event] = await st.events.wait("pv.reclaimed.v1", pv_name="pv-old")
        assert event["data"]["volume_id"] == old and event["data"]["released_at"].startswith("2026-01-01")
        assert event["berthtenant"] == tenants.tenant_a
        for name in ("recent", "retain", "untimed", "granted", "bound"):
            r = await st.prov.get(f"/v1/volumes/{vols[name]['id']}", headers=st.h(tenants.a))
            assert r.status_code == 200, name
            assert f"/pv-{name}" in k.objects["persistentvolumes"], name
        # Idempotent: the next run finds nothing more to do, and no second event.
        run = await st.run("reclaim")
        assert run["summary"]["due"] == 1 and not [a for a in run["actions"] if a["outcome"] == "done"]
        assert len(st.events.of("pv.reclaimed.v1")) == 1


async def test_usage_per_tenant_cluster_type_forecast_and_metrics(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path) as st:
        a1 = await st.volume("a1", 1)
        await st.volume("a2", 2)
        await st.volume("b1", 1, token=tenants.b)
        for i in range(3):  # three samples, each with more data: a growth rate to fit
            with open(st.volume_file(a1["id"]), "r+b") as f:
                f.seek(i * 4 * MIB)
                f.write(os.urandom(4 * MIB))
                os.fsync(f.fileno())
            run = await st.run("usage")
        assert run["summary"]["clusters"] == 1
        r = await st.watcher.get("/v1/usage", headers=st.h())
        assert r.status_code == 200, r.text
        rows = {(x["scope"], x["key"]): x for x in r.json()["items"]}
        ta, tb = rows["tenant", tenants.tenant_a], rows["tenant", tenants.tenant_b]
        assert (ta["volumes"], ta["provisioned_bytes"]) == (2, 3 * GIB)
        assert 12 * MIB <= ta["used_bytes"] < 13 * MIB, "thin: what the files really hold"
        assert (tb["volumes"], tb["provisioned_bytes"], tb["used_bytes"]) == (1, GIB, 0)
        [cluster] = [x for x in rows.values() if x["scope"] == "cluster"]
        assert (cluster["volumes"], cluster["provisioned_bytes"]) == (3, 4 * GIB)
        assert cluster["overcommit_ratio"] == round(4 * GIB / cluster["capacity_bytes"], 3)
        assert cluster["growth_bytes_per_day"] > 0, "fit on the recorded history"
        assert rows["volume_type", "standard"]["volumes"] == 3
        r = await st.watcher.get("/v1/forecasts", headers=st.h())
        [forecast] = r.json()["items"]
        assert forecast["samples"] == 3 and forecast["growth_bytes_per_day"] > 0
        assert forecast["days_until_threshold"] is not None and forecast["days_until_threshold"] > 0
        assert forecast["severity"] in ("info", "warning")
        [event] = await st.events.wait("capacity.forecast.v1", samples=3)
        assert event["data"]["cluster_id"] == cluster["key"]
        metrics = metric_values((await st.watcher.get("/metrics")).text)
        assert metrics["berth_watcher_provisioned_bytes", (("key", tenants.tenant_a), ("scope", "tenant"))] == 3 * GIB
        assert metrics["berth_watcher_used_bytes", (("key", cluster["key"]), ("scope", "cluster"))] >= 12 * MIB
        assert metrics["berth_watcher_volumes", (("key", "standard"), ("scope", "volume_type"))] == 3
        assert metrics["berth_watcher_overcommit_ratio", (("key", cluster["key"]), ("scope", "cluster"))] > 0
        assert metrics["berth_watcher_growth_bytes_per_day", (("key", cluster["key"]), ("scope", "cluster"))] > 0
        days = metrics["berth_watcher_days_until_threshold", (("cluster", cluster["key"]),)]
        assert days == forecast["days_until_threshold"]
        assert metrics["berth_watcher_runs_total", (("job", "usage"), ("status", "complete"))] >= 3


async def test_a_cluster_past_its_fill_threshold_is_a_finding_and_an_event(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with watcher_stack(make_settings, tenants, tmp_path, fill_threshold=1e-9) as st:
        vol = await st.volume("data")
        with open(st.volume_file(vol["id"]), "r+b") as f:
            f.write(os.urandom(MIB))
            os.fsync(f.fileno())
        await st.run("usage")
        [finding] = await st.findings(kind="capacity_threshold")
        assert finding["severity"] == "critical" and "past its fill threshold" in finding["summary"]
        assert "Add a cluster" in finding["advice"]
        [event] = await st.events.wait("finding.opened.v1", kind="capacity_threshold")
        assert event["data"]["id"] == finding["id"] and event["berthtenant"] == "_system"
        await st.run("usage")
        assert len(st.events.of("finding.opened.v1", kind="capacity_threshold")) == 1, "one breach, one event"

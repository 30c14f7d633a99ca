"""The watcher's Kubernetes source: the official client against the fake API server over
HTTP (lists in pages over one snapshot, continue tokens that expire, errors mid-list, a
dead or slow API, the PV watch, a PV deleted only if it is still the one read)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from berth_testing import eventually
from berth_testing.kube import FakeKube, fake_kube, write_kubeconfig
from berth_watcher.model import Pv
from berth_watcher.sources.kube import KubeCluster


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[FakeKube]:
    token = tmp_path / "kube-token"
    token.write_text("watcher-token\n")
    async with fake_kube(token) as k:
        yield k


@pytest.fixture
def cluster(kube: FakeKube, tmp_path: Path) -> KubeCluster:
    cfg = write_kubeconfig(tmp_path / "kubeconfig", kube.url, "watcher-token", name="east")
    return KubeCluster.from_spec(str(cfg), timeout_s=2, page_size=10)


def populate(kube: FakeKube, n: int = 35) -> None:
    for i in range(n):
        kube.add_pv(f"pv-{i:03d}", f"vol-{i:03d}", claim=("apps", f"data-{i}"))
        kube.add_pvc("apps", f"data-{i}", f"pv-{i:03d}")
    kube.add_pv("pv-nfs", "share-1", driver="nfs.csi.k8s.io")
    kube.add_pod("apps", "db-0", "node-1", ["data-0"])
    kube.add_node("node-1")
    kube.add_volume_attachment("csi-0", "pv-000", "node-1")


async def test_lists_every_page_of_one_snapshot(kube: FakeKube, cluster: KubeCluster) -> None:
    populate(kube)
    view, reports = await asyncio.to_thread(cluster.read)
    assert view.complete, reports
    assert len(view.pvs) == 36 and {p.driver for p in view.pvs} == {"csi.berth.dev", "nfs.csi.k8s.io"}
    pvs = {r.name: r for r in reports}["kubernetes/east/persistentvolumes"]
    assert pvs.ok and pvs.items == 36 and pvs.pages == 4
    assert len(kube.lists("persistentvolumes")) == 4
    pv = next(p for p in view.pvs if p.name == "pv-000")
    assert (pv.volume_handle, pv.claim, pv.phase, pv.reclaim_policy) == ("vol-000", "apps/data-0", "Bound", "Delete")
    assert pv.phase_since is not None and pv.created_at is not None
    assert view.claims[("east", "apps/data-0")] == "pv-000"
    assert [(p.name, p.node, p.claims) for p in view.pods] == [("db-0", "node-1", ("apps/data-0",))]
    assert view.nodes == {("east", "node-1")}
    assert [(v.pv_name, v.node, v.attached) for v in view.attachments] == [("pv-000", "node-1", True)]


async def test_changes_during_a_paged_list_do_not_tear_it(kube: FakeKube, cluster: KubeCluster) -> None:
    populate(kube)
    seen: list[int] = []
    original = cluster.core.list_persistent_volume

    def list_then_change(**kw: object) -> object:
        resp = original(**kw)  # type: ignore[arg-type]
        if not seen:  # after the first page: a PV deleted and one added
            kube.remove("persistentvolumes", "pv-034")
            kube.add_pv("pv-zzz", "vol-new")
        seen.append(1)
        return resp

    cluster.core.list_persistent_volume = list_then_change  # type: ignore[method-assign, assignment]
    view, _ = await asyncio.to_thread(cluster.read)
    names = {p.name for p in view.pvs}
    assert "pv-034" in names and "pv-zzz" not in names, "all pages come from the first page's snapshot"


async def test_expired_continue_token_lists_again_once(kube: FakeKube, cluster: KubeCluster) -> None:
    populate(kube)
    kube.expire_continue = 1
    view, reports = await asyncio.to_thread(cluster.read)
    assert view.complete and len(view.pvs) == 36
    kube.expire_continue = 2  # expired again on the second try: no consistent view, none at all
    view, reports = await asyncio.to_thread(cluster.read)
    assert not view.complete
    assert reports[-1].error is not None and "410" in reports[-1].error


async def test_error_mid_list_makes_the_read_incomplete(kube: FakeKube, cluster: KubeCluster) -> None:
    populate(kube)
    kube.fail_list_page, kube.fail_list_times = (3, 500), 1
    view, reports = await asyncio.to_thread(cluster.read)
    assert not view.complete
    assert reports == [reports[0]] and not reports[0].ok and "500" in (reports[0].error or "")
    view, _ = await asyncio.to_thread(cluster.read)
    assert view.complete, "the next read is whole again"


async def test_dead_and_slow_api(kube: FakeKube, cluster: KubeCluster) -> None:
    populate(kube, 3)
    await kube.go_down()
    view, reports = await asyncio.to_thread(cluster.read)
    assert not view.complete and "Connection refused" in (reports[0].error or "")
    await kube.come_back()
    kube.delay_s = 3.0  # beyond the 2 s timeout
    view, reports = await asyncio.to_thread(cluster.read)
    assert not view.complete and "timed out" in (reports[0].error or "").lower()
    kube.delay_s = 0.0
    assert (await asyncio.to_thread(cluster.read))[0].complete


async def test_pv_watch_reports_berth_pvs_and_survives_an_api_restart(kube: FakeKube, cluster: KubeCluster) -> None:
    populate(kube, 2)
    events: list[tuple[str, str, str]] = []
    stop = threading.Event()

    def on_change(kind: str, pv: Pv) -> None:
        events.append((kind, pv.name, pv.phase))

    thread = threading.Thread(target=cluster.watch_pvs, args=("csi.berth.dev", on_change, stop), daemon=True)
    thread.start()
    try:
        # The watch starts from the list's version: wait until it is established.
        await eventually(lambda: any(ct == "watch" for _m, _p, ct in kube.calls), within=10, what="watch started")
        kube.add_pv("pv-new", "vol-new")
        kube.add_pv("pv-other", "x", driver="nfs.csi.k8s.io")
        kube.set_pv_phase("pv-000", "Released", "2026-02-01T00:00:00Z")
        kube.remove("persistentvolumes", "pv-001")
        want = [("ADDED", "pv-new", "Bound"), ("MODIFIED", "pv-000", "Released"), ("DELETED", "pv-001", "Bound")]
        await eventually(lambda: events == want, within=10, what=f"watch events {want}")
        await kube.go_down()
        await kube.come_back()
        kube.add_pv("pv-after", "vol-after")
        await eventually(lambda: ("ADDED", "pv-after", "Bound") in events, within=20, what="events after a restart")
    finally:
        stop.set()


async def test_delete_pv_only_if_still_the_same(kube: FakeKube, cluster: KubeCluster) -> None:
    kube.add_pv("pv-1", "vol-1", phase="Released")
    uid = kube.objects["persistentvolumes"]["/pv-1"]["metadata"]["uid"]
    with pytest.raises(Exception, match="409"):
        await asyncio.to_thread(cluster.delete_pv, "pv-1", "uid-someone-else")
    assert await asyncio.to_thread(cluster.delete_pv, "pv-1", uid)
    assert not await asyncio.to_thread(cluster.delete_pv, "pv-1", uid), "already gone: nothing to do"

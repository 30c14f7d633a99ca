"""Watcher reconcile benchmark: 100,000 volumes against 100,000 PVs and 100,000 backend
entries, with 1 % injected findings of each kind, through the watcher's own code path.

Builds synthetic inventories as the sources hand them over (provisioner volumes and
snapshots, attacher grants, backend objects, Kubernetes PVs / claims / pods /
VolumeAttachments / nodes), runs `reconcile` and then the findings `plan` twice (a first
run records sightings, a second confirms them: what a real detection takes), and checks
every finding against what was injected:

- backend_orphan: backend objects without a provisioner record
- volume_without_pv: volumes no PV references
- pv_volume_missing: PVs whose volume has neither record nor backend object
- stale_attachment: grants on a node where no pod uses the volume
- single_writer_violation: single-node volumes granted read-write to two nodes

It prints wall time, CPU time, peak RSS, found / missed / false positives per kind, and
the ratio against a floor measured in the same run (one pass putting every record's id
into a set: the least any reconciler does). With `--through-kube`, the Kubernetes part
is served by the fake API server (real HTTP, the official client, pages of 500) and read
by the watcher's Kubernetes source instead of being built in memory.

    .venv/bin/python bench/watcher_reconcile.py                  # N=100000
    .venv/bin/python bench/watcher_reconcile.py --n 10000        # smaller
    .venv/bin/python bench/watcher_reconcile.py --through-kube   # + the Kubernetes source over HTTP

Targets: under 10 s, under 1 GB peak RSS, every injected finding found, no false positive.
Exit code 1 when one is missed (with --check), or any finding is missed or false.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from berth_watcher.findings import plan
from berth_watcher.model import Attachment, BackendObject, Inventory, KubeView, Pod, Pv, Volume, VolumeAttachment
from berth_watcher.reconcile import reconcile

DRIVER = "csi.berth.dev"
CLUSTER = "cl-bench"
KINDS = ("backend_orphan", "volume_without_pv", "pv_volume_missing", "stale_attachment", "single_writer_violation")
TARGET_S = 10.0
TARGET_RSS_MB = 1024.0
OLD = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Synthetic:
    inventory: Inventory
    expected: dict[str, set[str]] = field(default_factory=dict)  # kind -> keys
    records: int = 0


def build(n: int, rate: float) -> Synthetic:
    """n volumes, n PVs, n backend entries (each minus or plus the injected ones)."""
    k = max(1, int(n * rate))
    expected: dict[str, set[str]] = {kind: set() for kind in KINDS}
    volumes: list[Volume] = []
    objects: list[BackendObject] = []
    pvs: list[Pv] = []
    pods: list[Pod] = []
    vas: list[VolumeAttachment] = []
    grants: list[Attachment] = []
    claims: dict[tuple[str, str], str] = {}
    nodes = {("bench", f"node-{i:04d}") for i in range(200)}
    for i in range(n):
        vid = f"vol-{i:08d}"
        tenant = f"t{i % 50}"
        volumes.append(Volume(vid, tenant, CLUSTER, 1 + i % 100, "standard", "available", OLD))
        objects.append(BackendObject(CLUSTER, "volume", vid, (1 + i % 100) << 30, (i % 7) << 20, OLD, None))
        if i < k:  # volume_without_pv: no PV for it
            expected["volume_without_pv"].add(f"volume_without_pv:{vid}")
            continue
        pv = f"pv-{i:08d}"
        claim = f"ns{i % 100}/data-{i}"
        pvs.append(Pv("bench", pv, f"uid-{i}", DRIVER, vid, "Bound", "Delete", claim, ("ReadWriteOnce",), OLD, OLD))
        claims["bench", claim] = pv
        if i % 2 == 0:  # half the volumes are attached and used by a pod
            node = f"node-{i % 200:04d}"
            grants.append(Attachment(f"att-{i}", vid, tenant, node, "single_node_writer", False, "attached", OLD))
            vas.append(VolumeAttachment("bench", f"csi-{i}", DRIVER, pv, node, True))
            if k <= i < 3 * k:  # stale: granted there, but no pod
                expected["stale_attachment"].add(f"stale_attachment:{vid}:{node}")
            else:
                pods.append(Pod("bench", f"ns{i % 100}", f"app-{i}", node, "Running", (claim,)))
            if 3 * k <= i < 5 * k:  # a second read-write grant elsewhere: two writers
                other = f"node-{(i + 1) % 200:04d}"
                grants.append(Attachment(f"att2-{i}", vid, tenant, other, "single_node_writer", False, "attached", OLD))
                pods.append(Pod("bench", f"ns{i % 100}", f"app2-{i}", other, "Running", (claim,)))
                expected["single_writer_violation"].add(f"single_writer_violation:grants:{vid}")
    for j in range(k):  # backend objects nobody recorded
        oid = f"vol-leak-{j:06d}"
        objects.append(BackendObject(CLUSTER, "volume", oid, 1 << 30, 0, OLD, None))
        expected["backend_orphan"].add(f"backend_orphan:{CLUSTER}:volume:{oid}")
    for j in range(k):  # PVs of volumes gone everywhere
        pv = f"pv-gone-{j:06d}"
        pvs.append(Pv("bench", pv, f"uidg-{j}", DRIVER, f"vol-gone-{j:06d}", "Bound", "Retain", None, (), OLD, OLD))
        expected["pv_volume_missing"].add(f"pv_volume_missing:bench:{pv}")
    kube = KubeView(complete=True, pvs=pvs, pods=pods, attachments=vas, nodes=nodes, claims=claims)
    inv = Inventory(volumes, [], grants, {CLUSTER: objects}, kube)
    records = len(volumes) + len(objects) + len(pvs) + len(pods) + len(vas) + len(grants)
    return Synthetic(inv, expected, records)


def floor_pass(inv: Inventory) -> float:
    """The least work: every record's id into a set once."""
    start = time.perf_counter()
    seen: set[str] = set()
    for v in inv.volumes or []:
        seen.add(v.id)
    for objects in inv.backend.values():
        for o in objects or []:
            seen.add(o.id)
    assert inv.kube is not None
    for pv in inv.kube.pvs:
        seen.add(pv.name)
    for pod in inv.kube.pods:
        seen.add(pod.name)
    for va in inv.kube.attachments:
        seen.add(va.name)
    for a in inv.attachments or []:
        seen.add(a.id)
    return time.perf_counter() - start


async def through_kube(syn: Synthetic, page: int) -> tuple[float, KubeView]:
    """Serve the Kubernetes part from the fake API server; read it back with the source."""
    from berth_testing.kube import fake_kube, write_kubeconfig
    from berth_watcher.sources.kube import KubeCluster

    assert syn.inventory.kube is not None
    kv = syn.inventory.kube
    with tempfile.TemporaryDirectory(prefix="berth-bench-kube-") as tmp:
        token = Path(tmp) / "token"
        token.write_text("bench-token\n")
        async with fake_kube(token) as kube:
            for pv in kv.pvs:
                ns, _, name = (pv.claim or "/").partition("/")
                kube.add_pv(
                    pv.name, pv.volume_handle, claim=(ns, name) if pv.claim else None, reclaim_policy=pv.reclaim_policy
                )
            for (_k, claim), pv_name in kv.claims.items():
                ns, _, name = claim.partition("/")
                kube.add_pvc(ns, name, pv_name)
            for pod in kv.pods:
                kube.add_pod(pod.namespace, pod.name, pod.node, [c.partition("/")[2] for c in pod.claims])
            for va in kv.attachments:
                kube.add_volume_attachment(va.name, va.pv_name or "", va.node)
            for _k, node in kv.nodes:
                kube.add_node(node)
            cfg = write_kubeconfig(Path(tmp) / "kubeconfig", kube.url, "bench-token", name="bench")
            cluster = KubeCluster.from_spec(str(cfg), timeout_s=120, page_size=page)
            start = time.perf_counter()
            view, reports = await asyncio.to_thread(cluster.read)
            seconds = time.perf_counter() - start
            cluster.close()
    assert view.complete, reports
    return seconds, view


def run(n: int, rate: float, kube_http: bool, page: int) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    syn = build(n, rate)
    build_s = time.perf_counter() - t0
    kube_s = None
    if kube_http:
        kube_s, view = asyncio.run(through_kube(syn, page))
        syn.inventory.kube = view
    floor_s = floor_pass(syn.inventory)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    rec = reconcile(syn.inventory, DRIVER)
    reconcile_s = time.perf_counter() - start_wall
    grace = {k: 120.0 for k in KINDS}
    now = datetime.now(UTC)
    first = plan(rec.observations, rec.evaluated, {}, {}, now, grace.__getitem__)
    # The second run, a run later: the sightings of the first are confirmed.
    from berth_watcher.findings import Sighting

    sightings = {o.key: Sighting(o.key, o.scope, now, now) for o in first.new_sightings}
    rec2 = reconcile(syn.inventory, DRIVER)
    second = plan(rec2.observations, rec2.evaluated, sightings, {}, now + timedelta(seconds=180), grace.__getitem__)
    wall = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for obs, _first in second.confirmed:
        found.setdefault(obs.kind, set()).add(obs.key)
    per_kind = {}
    for kind in KINDS:
        want, got = syn.expected[kind], found.get(kind, set())
        per_kind[kind] = {
            "injected": len(want),
            "found": len(want & got),
            "missed": len(want - got),
            "false": len(got - want),
        }
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n,
        "records": syn.records,
        "build_s": round(build_s, 2),
        "kube_source_s": round(kube_s, 2) if kube_s is not None else None,
        "reconcile_s": round(reconcile_s, 3),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_record": round(cpu / syn.records / 2 * 1e6, 2),
        "floor_s": round(floor_s, 3),
        "ratio_to_floor": round(reconcile_s / floor_s, 1) if floor_s else None,
        "peak_rss_mb": round(rss_mb, 1),
        "kinds": per_kind,
        "total_process_cpu_s": round(time.process_time() - c0, 2),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=0.01, help="injected share of each kind")
    ap.add_argument("--through-kube", action="store_true", help="read the Kubernetes part over HTTP")
    ap.add_argument("--page", type=int, default=500, help="Kubernetes list page size (with --through-kube)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    out = run(args.n, args.rate, args.through_kube, args.page)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"watcher reconcile: {out['n']} volumes / PVs / backend entries, {out['records']} records in all")
        cpu = f"CPU {out['cpu_s']} s ({out['cpu_us_per_record']} us/record/run)"
        print(f"  reconcile + two plans: wall {out['wall_s']} s, {cpu}")
        floor = f"floor (ids into a set) {out['floor_s']} s: x{out['ratio_to_floor']}"
        print(f"  one reconcile {out['reconcile_s']} s; {floor}")
        if out["kube_source_s"] is not None:
            print(f"  Kubernetes source over HTTP (official client, pages of {args.page}): {out['kube_source_s']} s")
        print(f"  peak RSS {out['peak_rss_mb']} MB (building the inventories {out['build_s']} s)")
        for kind, f in out["kinds"].items():
            counts = (
                f"injected {f['injected']:>6}  found {f['found']:>6}  missed {f['missed']:>4}  false {f['false']:>4}"
            )
            print(f"  {kind:<24} {counts}")
        print(f"  load average {', '.join(f'{x:.2f}' for x in out['load_average'])}")
    bad = any(f["missed"] or f["false"] for f in out["kinds"].values())
    slow = out["wall_s"] > TARGET_S or out["peak_rss_mb"] > TARGET_RSS_MB
    return 1 if bad or (args.check and slow) else 0


if __name__ == "__main__":
    sys.exit(main())

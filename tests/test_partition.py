"""Failover under real network partitions, through the production CSI node service (issue 11).

Node A's and node B's CSI node services (`python -m berth_csi`, node mode) each run in a
network namespace of their own, joined to a bridge where nats-server listens; the
provisioner and the attacher run in this process on that nats-server (aggressive policy:
heartbeat 0.5 s, dead after 3 s). The test plays kubelet over the nodes' unix sockets and
the workloads with sequence-numbered writer processes (`berth_testing.seqwrite`).

A holds a file-backend volume and its workload keeps writing; then A is cut off, from NATS
only (an nftables rule in A's namespace: it still reaches everything else) or completely.
B retries its publish until the attacher has fenced A, then stages, publishes and writes.
Checked: B's grant comes only after A's fence completed; A's writes fail from the fence on
(EIO); no write of A was acknowledged, or landed on the volume, after the fence or B's
first write, and every acknowledged write of either is on the volume (a reader afterwards);
while partitioned, A's kubelet cannot stage the volume again. Then the partition heals: A
hears it is fenced, drops what it held and refuses to stage the volume again, and it stays
fenced (it did not restart since the fence, and no admin vouched for it) until it reboots.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_csi.state import NodeState
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.bus import Bus
from berth_shared.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from berth_shared.messages.attacher import PREFIX
from berth_shared.natsserver import NatsServer
from berth_shared.node import cut_off_file, mounts
from berth_testing import MakeSettings, Tenants, eventually, loop_skip_reason, running
from berth_testing.csinode import CsiNode
from berth_testing.netns import Lab, netns_skip_reason
from berth_testing.seqwrite import Writer, judge, read_records

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(loop_skip_reason() is not None, reason=loop_skip_reason() or ""),
]

# Aggressive, as the second policy: the whole failover takes a few seconds.
POLICY = {"heartbeat_interval_s": 0.5, "dead_after_s": 3.0, "monitor_interval_s": 0.2}
HEARTBEAT_S = 0.5


@pytest.fixture
def lab() -> Iterator[Lab]:
    why = netns_skip_reason()
    if why:
        pytest.skip(why)
    made = Lab().up()
    try:
        yield made
    finally:
        made.down()


@dataclass
class Stack:
    att: httpx.AsyncClient
    prov: httpx.AsyncClient
    bus: Bus
    tenants: Tenants
    a: CsiNode
    b: CsiNode
    lab: Lab
    nats: NatsServer
    workdir: Path

    def h(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def node(self, node_id: str) -> dict[str, Any]:
        r = await self.att.get(f"/v1/nodes/{node_id}", headers=self.h(self.tenants.admin))
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def publish(self, volume_id: str, node_id: str) -> dict[str, str]:
        reply = await self.bus.request(
            f"{PREFIX}.volume.publish", {"volume_id": volume_id, "node_id": node_id}, token=self.tenants.a, timeout=5.0
        )
        return dict(reply["publish_context"])

    async def fence_of(self, node_id: str) -> dict[str, Any]:
        r = await self.att.get("/v1/fences", params={"node_id": node_id}, headers=self.h(self.tenants.admin))
        done = [f for f in r.json()["items"] if f["state"] == "done"]
        assert done, r.json()
        return dict(max(done, key=lambda f: f["epoch"]))


@asynccontextmanager
async def partition_stack(make_settings: MakeSettings, tenants: Tenants, lab: Lab) -> AsyncIterator[Stack]:
    # Short: the nodes' unix sockets (107 bytes at most) and mounts live here.
    workdir = Path(tempfile.mkdtemp(prefix="bpart-", dir="/tmp"))
    node_a, node_b = lab.add_node(), lab.add_node()
    async with AsyncExitStack() as es:
        es.callback(shutil.rmtree, workdir, True)
        nats = NatsServer(workdir / "nats", host=lab.gateway)
        nats.start()
        es.callback(nats.stop)
        prov_settings = make_settings(ProvisionerSettings, nats_url=nats.url)
        att_settings = make_settings(AttacherSettings, nats_url=nats.url, **POLICY)
        assert isinstance(att_settings, AttacherSettings)
        cluster_root = (prov_settings.data_dir / "clusters" / "local").resolve()
        es.callback(_clear_volumes, cluster_root)  # last: after the nodes have stopped
        prov = await es.enter_async_context(running(provisioner_app(prov_settings)))
        att = await es.enter_async_context(running(attacher_app(att_settings)))
        bus = await Bus.connect(nats.url, "partition-test")
        es.push_async_callback(bus.close)
        nodes = []
        for node_id, net in (("node-a", node_a), ("node-b", node_b)):
            node = CsiNode(
                node_id, workdir / node_id, nats.url, tenants.admin, tenants.path, netns=net, heartbeat_s=HEARTBEAT_S
            )
            es.callback(node.stop)
            await asyncio.to_thread(node.start)
            nodes.append(node)
        st = Stack(att, prov, bus, tenants, nodes[0], nodes[1], lab, nats, workdir)
        for node_id in ("node-a", "node-b"):
            await eventually(functools.partial(_known_alive, st, node_id), what=f"{node_id} heartbeating")
        try:
            yield st
        except BaseException:
            for node in nodes:  # shown with the failure
                print(f"--- {node.node_id}'s CSI node service, last lines:\n{node.tail()}")
            raise


async def _known_alive(st: Stack, node_id: str) -> bool:
    r = await st.att.get(f"/v1/nodes/{node_id}", headers=st.h(st.tenants.admin))
    return r.status_code == 200 and r.json()["state"] == "alive"


def _clear_volumes(cluster_root: Path) -> None:
    """Whatever a failed test left on the volumes' files (mounts, loop devices) goes."""
    for path in cluster_root.rglob("*.img") if cluster_root.exists() else []:
        with contextlib.suppress(Exception):
            cut_off_file(path)


def _wall(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1e9)


async def _take_over(st: Stack, volume_id: str, node_id: str, within_s: float = 30.0) -> tuple[dict[str, str], int]:
    """Retry the publish every 100 ms until granted; (publish context, wall ns of the grant)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            ctx = await st.publish(volume_id, node_id)
            return ctx, time.time_ns()
        except (FailedPrecondition, Unavailable, DeadlineExceeded):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def _acks(writer: Writer, at_least: int) -> None:
    await eventually(lambda: len(writer.read().acked) >= at_least, within=15.0, what=f"{writer.node} writing")


def _stage_error(node: CsiNode, volume_id: str, ctx: dict[str, str]) -> grpc.RpcError:
    try:
        node.stage(volume_id, ctx)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{node.node_id} staged {volume_id} again")


@pytest.mark.parametrize("cut", ["nats", "all"])
async def test_partitioned_holder_is_fenced_before_the_volume_moves(
    make_settings: MakeSettings, tenants: Tenants, lab: Lab, cut: str, tmp_path: Path
) -> None:
    async with partition_stack(make_settings, tenants, lab) as st:
        r = await st.prov.post(
            "/v1/volumes", json={"name": "pg-0", "size_gib": 1, "volume_type": "standard"}, headers=st.h(tenants.a)
        )
        assert r.status_code == 201, r.text
        vid = r.json()["id"]
        ctx_a = await st.publish(vid, "node-a")
        target_a = await asyncio.to_thread(st.a.stage_and_publish, vid, ctx_a)
        writer_a = Writer(target_a, "node-a", tmp_path / "writer-a.log").start()
        writer_b: Writer | None = None
        try:
            await _acks(writer_a, 5)

            # The partition: A's workload goes on writing, A's node service stays up.
            net_a = st.lab.nodes[0]
            await asyncio.to_thread(net_a.cut, st.nats.port if cut == "nats" else None)
            cut_ns = time.time_ns()

            ctx_b, granted_ns = await _take_over(st, vid, "node-b")
            assert int(ctx_b["generation"]) > int(ctx_a["generation"])
            fence = await st.fence_of("node-a")
            fenced_ns = _wall(fence["completed_at"])
            assert _wall(fence["created_at"]) > cut_ns, "A was fenced before it was cut off"
            assert granted_ns >= fenced_ns, "B was granted the volume before A's fence completed"

            target_b = await asyncio.to_thread(st.b.stage_and_publish, vid, ctx_b)
            writer_b = Writer(target_b, "node-b", tmp_path / "writer-b.log").start()
            await _acks(writer_b, 5)

            # A's writes fail from the fence on: the file system under them is shut down.
            log_a = writer_a.read()
            after = [x for x in log_a.attempts if x.issued_ns >= fenced_ns]
            assert after and all(x.errno == errno.EIO for x in after), after[:5]

            # Partitioned, A's kubelet cannot stage the volume again: A's node service does
            # not know whether it is fenced, and refuses.
            err = await asyncio.to_thread(_stage_error, st.a, vid, ctx_a)
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION), err.details()
            assert not mounts.is_mounted(st.a.staging_path(vid))

            # The partition heals. Until A's connection has recovered (TCP's retransmission
            # backoff: seconds) it still refuses with UNAVAILABLE; then it hears it is fenced,
            # drops what it held, and refuses the stale stage for good.
            await asyncio.to_thread(net_a.heal)
            err = await eventually(
                lambda: asyncio.to_thread(_stage_error, st.a, vid, ctx_a),
                lambda e: e.code() != grpc.StatusCode.UNAVAILABLE,
                within=30.0,
                every=0.2,
                what="node-a back in touch with the attacher",
            )
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            await eventually(lambda: NodeState(st.a.workdir / "state").all() == [], what="node-a dropped its volumes")
            assert not mounts.is_mounted(target_a) and not mounts.is_mounted(st.a.staging_path(vid))
            # A asked to be unfenced with what it had (nothing) and its boot id: refused, as it
            # did not restart since the fence. It stays fenced, whatever it retries.
            node_a_now = await st.node("node-a")
            assert node_a_now["state"] == "fenced", node_a_now
            await _acks(writer_b, len(writer_b.read().acked) + 5)  # B undisturbed
            assert (await st.node("node-a"))["state"] == "fenced"

            # The reader: both nodes' records on the volume, as B sees it.
            log_b = writer_b.stop()
            log_a = writer_a.stop()
            wrong = judge(log_a, read_records(target_b, "node-a"), log_b, read_records(target_b, "node-b"), fenced_ns)
            assert wrong == []
            assert log_a.acked, "A never wrote"
        finally:
            writer_a.stop()
            if writer_b is not None:
                writer_b.stop()
        await asyncio.to_thread(st.b.unpublish_and_unstage, vid)

        # A reboots (a new boot id): its node service asks again and is unfenced, recorded so.
        await asyncio.to_thread(st.a.stop)
        st.a.boot_id_file = tmp_path / "boot_id-a"
        st.a.boot_id_file.write_text("after-the-reboot\n")
        await asyncio.to_thread(st.a.start)
        back = await eventually(
            lambda: st.node("node-a"), lambda n: n["state"] == "alive", within=15.0, what="node-a unfenced"
        )
        assert back["state_reason"].startswith("unfenced: restarted") and back["boot_id"] == "after-the-reboot"

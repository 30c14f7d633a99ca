"""What the partition tests (issue 11) share, whatever the storage: the stack and the steps.

The stack: node A's and node B's CSI node services (`python -m berth_csi`, node mode) each
in a network namespace of their own on a `berth_testing.netns.Lab`, where nats-server
listens on the bridge; the provisioner and the attacher in this process on that
nats-server, with the aggressive policy (heartbeat 0.5 s, dead after 3 s). The test plays
kubelet over the nodes' unix sockets. The steps: B's take-over (publish retried until
granted), the stale stage A's kubelet tries while partitioned and after the heal, and A's
reboot that finally unfences it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
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
from berth_shared.node import mounts
from berth_testing import MakeSettings, Tenants, eventually, running
from berth_testing.csinode import CsiNode
from berth_testing.netns import Lab, NetNode, netns_skip_reason
from berth_testing.seqwrite import Attempt, Writer, judge, read_records

# Aggressive, as the second policy: the whole failover takes a few seconds.
POLICY = {"heartbeat_interval_s": 0.5, "dead_after_s": 3.0, "monitor_interval_s": 0.2}
HEARTBEAT_S = 0.5


@contextmanager
def lab_or_skip() -> Iterator[Lab]:
    """A lab (bridge) for the test's nodes, or the test skipped with the reason."""
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
    net_a: NetNode
    net_b: NetNode
    nats: NatsServer
    workdir: Path

    def h(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def node(self, node_id: str) -> dict[str, Any]:
        r = await self.att.get(f"/v1/nodes/{node_id}", headers=self.h(self.tenants.admin))
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def create_volume(self, volume_type: str, name: str = "pg-0") -> str:
        body = {"name": name, "size_gib": 1, "volume_type": volume_type}
        r = await self.prov.post("/v1/volumes", json=body, headers=self.h(self.tenants.a))
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

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


NodeEnv = Callable[[str, Path], dict[str, str]]  # (node id, its work dir) -> extra environment


@asynccontextmanager
async def partition_stack(
    make_settings: MakeSettings,
    tenants: Tenants,
    lab: Lab,
    *,
    node_env: NodeEnv | None = None,
    cleanup: Callable[[ProvisionerSettings], None] | None = None,
) -> AsyncIterator[Stack]:
    """The stack, with two new nodes on `lab` (removed after). `node_env`: each node
    service's extra environment (its cephx identity); `cleanup` runs once the node services
    have stopped (whatever a failed test left on the storage: mounts, loop devices)."""
    # Short: the nodes' unix sockets (107 bytes at most) and mounts live here.
    workdir = Path(tempfile.mkdtemp(prefix="bpart-", dir="/tmp"))
    async with AsyncExitStack() as es:
        es.callback(shutil.rmtree, workdir, True)
        es.callback(_unmount_under, workdir)  # before the rmtree: never delete through a mount
        net_a, net_b = lab.add_node(), lab.add_node()
        es.callback(lab.remove, net_a)
        es.callback(lab.remove, net_b)
        nats = NatsServer(workdir / "nats", host=lab.gateway)
        nats.start()
        es.callback(nats.stop)
        prov_settings = make_settings(ProvisionerSettings, nats_url=nats.url)
        att_settings = make_settings(AttacherSettings, nats_url=nats.url, **POLICY)
        assert isinstance(prov_settings, ProvisionerSettings) and isinstance(att_settings, AttacherSettings)
        if cleanup is not None:
            es.callback(cleanup, prov_settings)  # after the nodes have stopped
        prov = await es.enter_async_context(running(provisioner_app(prov_settings)))
        att = await es.enter_async_context(running(attacher_app(att_settings)))
        bus = await Bus.connect(nats.url, "partition-test")
        es.push_async_callback(bus.close)
        nodes = []
        for node_id, net in (("node-a", net_a), ("node-b", net_b)):
            node_dir = workdir / node_id
            env = node_env(node_id, node_dir) if node_env is not None else {}
            node = CsiNode(
                node_id,
                node_dir,
                nats.url,
                tenants.admin,
                tenants.path,
                netns=net,
                heartbeat_s=HEARTBEAT_S,
                extra_env=env,
            )
            es.callback(node.stop)
            await asyncio.to_thread(node.start)
            nodes.append(node)
        st = Stack(att, prov, bus, tenants, nodes[0], nodes[1], net_a, net_b, nats, workdir)
        for node_id in ("node-a", "node-b"):
            await eventually(functools.partial(_known_alive, st, node_id), what=f"{node_id} heartbeating")
        try:
            yield st
        except BaseException:
            for node in nodes:  # shown with the failure
                print(f"--- {node.node_id}'s CSI node service, last lines:\n{node.tail()}")
            raise


def _unmount_under(workdir: Path) -> None:
    """What a failed test left mounted under the work dir (a publish's bind mount of a dead
    fuse client, say) goes, lazily: nothing there answers any more."""
    root = str(workdir) + "/"
    for m in sorted((m for m in mounts.table() if m.target.startswith(root)), key=lambda m: -len(m.target)):
        with contextlib.suppress(Exception):
            mounts.umount(m.target, lazy=True)


async def _known_alive(st: Stack, node_id: str) -> bool:
    r = await st.att.get(f"/v1/nodes/{node_id}", headers=st.h(st.tenants.admin))
    return r.status_code == 200 and r.json()["state"] == "alive"


def wall_ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1e9)


async def take_over(st: Stack, volume_id: str, node_id: str, within_s: float = 30.0) -> tuple[dict[str, str], int]:
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


async def acks(writer: Writer, at_least: int) -> None:
    await eventually(lambda: len(writer.read().acked) >= at_least, within=15.0, what=f"{writer.node} writing")


@dataclass
class TakeOver:
    ctx_b: dict[str, str]
    fence: dict[str, Any]  # A's fence record, done
    fenced_ns: int  # wall ns when A's fence completed
    cut_ns: int  # wall ns of the cut
    granted_ns: int  # wall ns of B's grant
    staged_ns: int = 0  # wall ns when B had staged and published it (write_on_b)

    def timings(self, writer_b: Writer) -> str:
        """The fence's own duration, and from the cut: B's grant, B staged and published,
        B's first fsynced write (its writer's start included: about a second of imports)."""
        fence_ms = (self.fenced_ns - wall_ns(self.fence["created_at"])) / 1e6
        first_b = writer_b.read().first_ack_ns() or self.granted_ns

        def since_cut(ns: int) -> str:
            return f"{(ns - self.cut_ns) / 1e9:.2f} s"

        return (
            f"fence {fence_ms:.0f} ms; from the cut: granted {since_cut(self.granted_ns)}, "
            f"staged {since_cut(self.staged_ns)}, first write {since_cut(first_b)}"
        )


async def cut_and_take_over(st: Stack, volume_id: str, ctx_a: dict[str, str], cut: str) -> TakeOver:
    """The partition (`cut`: "nats", A's link to nats-server only; "all": every packet),
    A's workload still writing and its node service up; then B's publish retried until
    granted. B's grant must come after A's fence completed, and the fence after the cut."""
    await asyncio.to_thread(st.net_a.cut, st.nats.port if cut == "nats" else None)
    cut_ns = time.time_ns()
    ctx_b, granted_ns = await take_over(st, volume_id, "node-b")
    assert int(ctx_b["generation"]) > int(ctx_a["generation"])
    fence = await st.fence_of("node-a")
    fenced_ns = wall_ns(fence["completed_at"])
    assert wall_ns(fence["created_at"]) > cut_ns, "A was fenced before it was cut off"
    assert granted_ns >= fenced_ns, "B was granted the volume before A's fence completed"
    return TakeOver(ctx_b, fence, fenced_ns, cut_ns, granted_ns)


async def write_on_b(st: Stack, volume_id: str, over: TakeOver, log: Path) -> tuple[str, Writer]:
    """B stages and publishes the volume and its workload writes: (B's target, its writer)."""
    target_b = await asyncio.to_thread(st.b.stage_and_publish, volume_id, over.ctx_b)
    over.staged_ns = time.time_ns()
    writer_b = Writer(target_b, "node-b", log).start()
    await acks(writer_b, 5)
    return target_b, writer_b


async def failed_after(writer: Writer, fenced_ns: int) -> list[Attempt]:
    """A's attempts issued after its fence, once one has failed: all of them must have."""
    log = await eventually(
        writer.read,
        lambda log: any(x.issued_ns >= fenced_ns for x in log.failed),
        within=15.0,
        what=f"{writer.node}'s write after the fence failing",
    )
    after = [x for x in log.attempts if x.issued_ns >= fenced_ns]
    assert all(x.errno != 0 for x in after), after[:5]
    return after


def judge_on_b(writer_a: Writer, writer_b: Writer, target_b: str, fenced_ns: int) -> None:
    """The reader: both writers stopped, both nodes' records on the volume, as B sees it."""
    log_b, log_a = writer_b.stop(), writer_a.stop()
    wrong = judge(log_a, read_records(target_b, "node-a"), log_b, read_records(target_b, "node-b"), fenced_ns)
    assert wrong == []
    assert log_a.acked, "A never wrote"


def stage_error(node: CsiNode, volume_id: str, ctx: dict[str, str]) -> grpc.RpcError:
    try:
        node.stage(volume_id, ctx)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{node.node_id} staged {volume_id} again")


async def refused_while_partitioned(st: Stack, volume_id: str, ctx_a: dict[str, str]) -> None:
    """Partitioned, A's kubelet cannot stage the volume again: A's node service does not
    know whether it is fenced, and refuses."""
    err = await asyncio.to_thread(stage_error, st.a, volume_id, ctx_a)
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION), err.details()


async def heal_and_stay_fenced(st: Stack, volume_id: str, ctx_a: dict[str, str], target_a: str) -> None:
    """The partition heals. Until A's connection has recovered (TCP's retransmission
    backoff: seconds) it still refuses with UNAVAILABLE; then it hears it is fenced, drops
    what it held, and refuses the stale stage for good. It asked to be unfenced with what it
    had (nothing) and its boot id: refused, as it did not restart since the fence."""
    await asyncio.to_thread(st.net_a.heal)
    err = await eventually(
        lambda: asyncio.to_thread(stage_error, st.a, volume_id, ctx_a),
        lambda e: e.code() != grpc.StatusCode.UNAVAILABLE,
        within=30.0,
        every=0.2,
        what="node-a back in touch with the attacher",
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    await eventually(lambda: NodeState(st.a.workdir / "state").all() == [], what="node-a dropped its volumes")
    assert not mounts.is_mounted(target_a) and not mounts.is_mounted(st.a.staging_path(volume_id))
    node_a_now = await st.node("node-a")
    assert node_a_now["state"] == "fenced", node_a_now


async def reboot_unfences(st: Stack, boot_id_file: Path) -> dict[str, Any]:
    """A reboots (a new boot id): its node service asks again and is unfenced, recorded so."""
    await asyncio.to_thread(st.a.stop)
    st.a.boot_id_file = boot_id_file
    boot_id_file.write_text("after-the-reboot\n")
    await asyncio.to_thread(st.a.start)
    back = await eventually(
        lambda: st.node("node-a"), lambda n: n["state"] == "alive", within=15.0, what="node-a unfenced"
    )
    assert back["state_reason"].startswith("unfenced: restarted") and back["boot_id"] == "after-the-reboot"
    return back

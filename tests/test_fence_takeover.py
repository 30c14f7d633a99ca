"""Two attacher replicas on one PostgreSQL schema, as real processes: a fence survives its
replica's `kill -9`, and a fence slower than its lease is not taken from its replica
(issue 11: one operation runner, with lease renewal while a step runs).

A node agent in this process stages a file-backend volume (a real loop device and mount)
on node A, keeps a file open for writing on it and goes silent. An admin declares node A
down on replica 1, which starts the fence and runs it:

* killed at `fence.before_backend` (nothing cut yet: node A still writes) or
  `fence.after_backend` (cut, not yet recorded: node A's writes fail with EIO), replica 2
  takes the fence over once replica 1's lease lapsed and finishes it: the file system is
  shut down once (by replica 1, or else by replica 2), replica 2's redo of the rest
  changes nothing (the backend's fence is idempotent), one fence of epoch 1 with two
  attempts, one
  `node.fenced` and one `attachment.released` event, node A's writes fail, node B gets
  the volume with its data;
* slowed at `fence.before_backend` for three leases, replica 1 keeps renewing its lease
  and finishes the fence itself: replica 2 never claims it (one attempt, replica 1 owner).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from berth_procs import ServiceProcess, stream_events
from sqlalchemy import select

from berth_attacher import tables as at
from berth_attacher.agent import Held, NodeAgent
from berth_shared.bus import Bus
from berth_shared.node import host
from berth_testing import Tenants, eventually, loop_skip_reason
from berth_testing.single_writer import cleanup_host

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(loop_skip_reason() is not None, reason=loop_skip_reason() or ""),
]

LEASE_S = 3.0  # long enough for replica 1 to cut and die before its lease lapses, on a busy machine
POLICY = {
    # Only the admin's down call fences here: no node dies on its own.
    "BERTH_DEAD_AFTER_S": "600",
    "BERTH_MONITOR_INTERVAL_S": "0.2",
    "BERTH_OPERATION_LEASE_S": str(LEASE_S),
}


@pytest.fixture
def pg_url(db_url: str | None) -> str:
    if not db_url or not db_url.startswith("postgresql"):
        pytest.skip("two attacher replicas share one PostgreSQL schema")
    return db_url


@dataclass
class Replicas:
    prov: ServiceProcess
    one: ServiceProcess
    two: ServiceProcess
    agent: NodeAgent  # node A
    other: NodeAgent  # node B
    volume_id: str
    held: Held

    @property
    def node(self) -> str:
        return str(self.agent.node_id)


@asynccontextmanager
async def replicas(
    service_process: Callable[..., ServiceProcess],
    tenants: Tenants,
    tmp_path: Path,
    *,
    crash_at: str | None = None,
    pause_at: str | None = None,
) -> AsyncIterator[Replicas]:
    """A provisioner, attacher replicas 1 (with the fault) and 2 on one schema, a volume
    staged on node A (silent from then on) and a live node B."""
    prov = service_process("provisioner")
    one = service_process("attacher", extra_env=POLICY | ({"BERTH_PAUSE_AT": pause_at} if pause_at else {}))
    two = service_process("attacher", db_schema=one.db_schema, extra_env=POLICY)
    prov.start()
    one.start(crash_at=crash_at)
    await prov.wait_ready()
    await one.wait_ready()  # replica 1 migrates the schema; then replica 2 joins it
    two.start()
    await two.wait_ready()
    async with prov.client(tenants.a) as client:
        r = await client.post("/v1/volumes", json={"name": "pg-0", "size_gib": 1, "volume_type": "standard"})
    assert r.status_code == 201, r.text
    volume_id = r.json()["id"]

    buses: list[Bus] = []
    agents: list[NodeAgent] = []
    held: Held | None = None
    try:
        # Unique node ids: the events stream is shared by the whole session.
        for node_id in (f"node-a-{uuid.uuid4().hex[:6]}", f"node-b-{uuid.uuid4().hex[:6]}"):
            bus = await Bus.connect(one.nats_url, f"agent-{node_id}")
            buses.append(bus)
            agent = NodeAgent(bus, node_id, tenants.admin, interval_s=0.2, mount_root=tmp_path / "mounts")
            await agent.heartbeat()
            agents.append(agent)
        held = await agents[0].publish_and_stage(volume_id)
        agents[1].start()
        yield Replicas(prov, one, two, agents[0], agents[1], volume_id, held)
    finally:
        await cleanup_host(agents, [held.path] if held else [])
        for bus in buses:
            await bus.close()


async def _fence_row(proc: ServiceProcess, node_id: str) -> dict[str, Any]:
    db = await proc.open_db()
    try:
        async with db.sessions() as s:
            rows = (await s.execute(select(at.fences).where(at.fences.c.node_id == node_id))).all()
    finally:
        await db.dispose()
    assert len(rows) == 1, f"one fence of {node_id} expected: {rows}"
    return dict(rows[0]._mapping)


async def _node_state(proc: ServiceProcess, admin: str, node_id: str) -> str | None:
    async with proc.client(admin) as client:
        r = await client.get(f"/v1/nodes/{node_id}")
    return str(r.json()["state"]) if r.status_code == 200 else None


async def _down(proc: ServiceProcess, admin: str, node_id: str, *, may_die: bool) -> None:
    try:
        async with proc.client(admin) as client:
            r = await client.post(f"/v1/nodes/{node_id}/down", json={"reason": "test"})
    except httpx.TransportError:
        assert may_die, "the replica died under the down call"
        return
    assert r.status_code == 200, r.text


async def _events_of(nats_url: str, node_id: str, volume_id: str) -> list[str]:
    """The types of the node's and the volume's attachment events, in stream order."""
    events = await stream_events(nats_url, "berth.events.>")
    out = []
    for e in events:
        ce = e["event"]
        if ce["subject"] == node_id or (ce.get("data") or {}).get("volume_id") == volume_id:
            out.append(ce["type"])
    return out


def _write(writer: BinaryIO) -> int:
    """Write and fsync through node A's open file: 0, or the errno it failed with (EIO once cut)."""
    try:
        writer.write(b"one more row\n")
        os.fsync(writer.fileno())
    except OSError as exc:
        return exc.errno or -1
    return 0


def _owner_of(proc: ServiceProcess) -> str:
    # The attacher's owner name (app.py): host, data directory, schema.
    return f"{socket.gethostname()}:{proc.data_dir.resolve()}:{proc.db_schema}"


@pytest.mark.parametrize("crash_at", ["fence.before_backend", "fence.after_backend"])
async def test_a_fence_survives_its_replicas_kill_and_runs_once(
    service_process: Callable[..., ServiceProcess], tenants: Tenants, tmp_path: Path, pg_url: str, crash_at: str
) -> None:
    async with replicas(service_process, tenants, tmp_path, crash_at=crash_at) as st:
        mount = Path(st.held.mount)
        (mount / "table.dat").write_bytes(b"committed row\n")
        os.sync()
        writer = open(mount / "wal.log", "wb", buffering=0)  # noqa: SIM115
        await st.agent.stop()  # node A goes silent, keeping its mount: as if partitioned

        await _down(st.one, tenants.admin, st.node, may_die=True)
        assert await st.one.wait_exit() == -9, st.one.tail()
        # Replica 1 died mid-fence; its lease (LEASE_S) still runs, so nobody has touched it.
        fence = await _fence_row(st.two, st.node)
        assert (fence["state"], fence["owner"], fence["attempts"]) == ("pending", _owner_of(st.one), 1)
        cut_by_one = crash_at == "fence.after_backend"
        assert (_write(writer) == errno.EIO) is cut_by_one

        await eventually(
            lambda: _node_state(st.two, tenants.admin, st.node),
            lambda s: s == "fenced",
            within=30.0,
            what="replica 2 to take the fence over and finish it",
        )
        fence = await _fence_row(st.two, st.node)
        assert (fence["state"], fence["epoch"], fence["owner"]) == ("done", 1, _owner_of(st.two))
        assert fence["attempts"] == 2  # replica 1's claim, replica 2's takeover: no third
        # Replica 2 cut node A's loop device: the first cut, or after replica 1's a redo that
        # changes nothing. The irreversible step, the file system's shutdown, ran once: by
        # replica 2 only when replica 1 had not got to it.
        [cut] = fence["results"].values()  # the one cluster's
        assert st.held.device in cut, cut
        assert any(c.startswith("shutdown ") for c in cut) is not cut_by_one, cut

        assert _write(writer) == errno.EIO
        with contextlib.suppress(OSError):
            writer.close()
        await eventually(lambda: host.loops_backed_by(st.held.path), lambda loops: loops == [], what="loop detached")

        moved = await st.other.publish_and_stage(st.volume_id)
        assert (Path(moved.mount) / "table.dat").read_bytes() == b"committed row\n"

        types = await eventually(
            lambda: _events_of(st.one.nats_url, st.node, st.volume_id),
            lambda ts: "io.berth.attachment.released.v1" in ts,
            what="the fence's events relayed",
        )
        fence_events = [t for t in types if t.startswith("io.berth.node.fenc")]
        assert fence_events == ["io.berth.node.fencing.v1", "io.berth.node.fenced.v1"], types
        assert types.count("io.berth.attachment.released.v1") == 1, types


async def test_a_fence_slower_than_its_lease_stays_with_its_replica(
    service_process: Callable[..., ServiceProcess], tenants: Tenants, tmp_path: Path, pg_url: str
) -> None:
    slow_s = 3 * LEASE_S
    async with replicas(service_process, tenants, tmp_path, pause_at=f"fence.before_backend={slow_s}") as st:
        await st.agent.stop()
        await _down(st.one, tenants.admin, st.node, may_die=False)

        # While the step is stuck for three leases, replica 2 sweeps every LEASE_S / 4 and
        # would take the fence the moment replica 1's lease lapsed: it never may.
        owners: set[tuple[str, int]] = set()

        async def done() -> bool:
            fence = await _fence_row(st.two, st.node)
            owners.add((fence["owner"], fence["attempts"]))
            return bool(fence["state"] == "done")

        await eventually(done, within=slow_s + 20.0, every=0.1, what="the slow fence to finish")
        assert owners == {(_owner_of(st.one), 1)}
        assert await _node_state(st.two, tenants.admin, st.node) == "fenced"
        assert host.loops_backed_by(st.held.path) == []
        async with st.two.client(tenants.admin) as client:
            metrics = (await client.get("/metrics")).text
        assert not _fence_claims(metrics), "replica 2 claimed the fence"
        async with st.one.client(tenants.admin) as client:
            assert _fence_claims((await client.get("/metrics")).text) == ["1.0"]
        assert "lease lost" not in st.one.tail(400)


def _fence_claims(metrics: str) -> list[str]:
    """The values of the fence claims counter in a /metrics page."""
    return [
        line.rsplit(" ", 1)[1]
        for line in metrics.splitlines()
        if line.startswith("berth_operation_claims_total{") and 'kind="fence"' in line
    ]

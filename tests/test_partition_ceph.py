"""Failover under real network partitions on a real Ceph, through the production CSI node
service (issue 11): the RBD and CephFS versions of `test_partition.py`.

The stack is that test's (`partition_harness`): node A's and node B's CSI node services each
in a network namespace of their own; the provisioner and the attacher in this process, on a
nats-server listening on the lab's bridge. The Ceph cluster (mon, mgr, OSD, MDS) listens on
that bridge too, so the nodes' Ceph clients (rbd-fuse + loop + ext4 for RBD, ceph-fuse for
CephFS, started by the node services, hence inside their namespaces) reach the monitors and
the OSDs through their own veth links. One cluster for the module: the session's listens on
loopback, which a namespace cannot reach.

A holds the volume and its workload keeps writing; then A is cut off, from NATS only (A
still reaches the monitors and the OSDs: the case where a node that is merely unheard
corrupts a file system) or completely. Checked: B's grant comes only after A's fence at
Ceph completed (RBD: A's client address blocklisted and its exclusive lock broken; CephFS:
A's MDS sessions evicted and blocklisted); cut from NATS only, A's Ceph client still has a
route to the monitors and the OSDs when the fence lands, and its writes fail from then on
(the errno is printed); no write of A was acknowledged, or landed on the volume, after the
fence or B's first write, and every acknowledged write is there (a reader on B
afterwards). After the heal A drops what it held, does not stage again, stays fenced and
stays blocklisted, until it reboots.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from partition_harness import (
    Stack,
    acks,
    cut_and_take_over,
    failed_after,
    heal_and_stay_fenced,
    judge_on_b,
    lab_or_skip,
    partition_stack,
    reboot_unfences,
    refused_while_partitioned,
    write_on_b,
)

from berth_csi.state import NodeState
from berth_provisioner.config import ProvisionerSettings
from berth_shared.backends.ceph_common import addr_ip, addr_matches
from berth_shared.node import ceph as node_ceph
from berth_testing import MakeSettings, Tenants
from berth_testing.ceph import CephCluster, skip_unless_can_attach
from berth_testing.cephnodes import TYPES, Kind, authorize_nodes, ceph_backend, node_env, register_ceph
from berth_testing.netns import Lab
from berth_testing.plugin import start_ceph
from berth_testing.seqwrite import Attempt, Writer

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def ceph_lab() -> Iterator[tuple[Lab, CephCluster]]:
    """A lab whose bridge the cluster listens on (made first: the daemons bind to it)."""
    with lab_or_skip() as lab:
        cluster = start_ceph(CephCluster(address=lab.gateway))
        try:
            yield lab, cluster
        finally:
            cluster.stop()


def _osd_port(cluster: CephCluster) -> int:
    """osd.0's public v2 port, from the osdmap."""
    dump = cluster.mon_command("osd dump")
    (osd,) = dump["osds"]
    v2 = [a for a in osd["public_addrs"]["addrvec"] if a["type"] == "v2"]
    return int(v2[0]["addr"].rsplit(":", 1)[1])


def _client_address(st: Stack, volume_id: str) -> str:
    """The Ceph client address A's node service recorded for the volume (what a fence cuts)."""
    vs = NodeState(st.a.workdir / "state").get(volume_id)
    assert vs is not None and vs.staged.client_address, vs
    return str(vs.staged.client_address)


@pytest.mark.parametrize("cut", ["nats", "all"])
@pytest.mark.parametrize("kind", ["rbd", "cephfs"])
async def test_partitioned_ceph_holder_is_fenced_at_the_storage_before_the_volume_moves(
    make_settings: MakeSettings,
    tenants: Tenants,
    ceph_lab: tuple[Lab, CephCluster],
    kind: Kind,
    cut: str,
    tmp_path: Path,
) -> None:
    skip_unless_can_attach(kind)
    lab, cluster = ceph_lab

    def sweep(_: ProvisionerSettings) -> None:  # whatever a failed test left: fuse clients, loops, mounts
        node_ceph.sweep(cluster.conf)

    backend = ceph_backend(cluster, kind)
    try:
        async with partition_stack(make_settings, tenants, lab, node_env=node_env(cluster, kind), cleanup=sweep) as st:
            await register_ceph(st.prov, tenants.admin, cluster, kind)
            vid = await st.create_volume(TYPES[kind])
            if kind == "cephfs":
                await authorize_nodes(backend, vid, (st.a, st.b))
            ctx_a = await st.publish(vid, "node-a")
            target_a = await asyncio.to_thread(st.a.stage_and_publish, vid, ctx_a)
            addr_a = _client_address(st, vid)
            assert addr_ip(addr_a) == st.net_a.address, f"A's Ceph client is not in A's namespace: {addr_a}"
            writer_a = Writer(target_a, "node-a", tmp_path / "writer-a.log").start()
            writer_b: Writer | None = None
            try:
                await acks(writer_a, 5)

                over = await cut_and_take_over(st, vid, ctx_a, cut)
                fenced_ns = over.fenced_ns
                (done,) = over.fence["results"].values()
                assert f"blocklist {addr_a}" in done, done
                if kind == "rbd":
                    assert f"lock {vid} {addr_a}" in done, "A held the exclusive lock: the fence broke it"
                else:
                    assert any(c.startswith("evict ") and c.endswith(addr_a) for c in done), done

                target_b, writer_b = await write_on_b(st, vid, over, tmp_path / "writer-b.log")
                print(f"{kind}, cut {cut}: {over.timings(writer_b)}")

                # The point of the NATS-only cut: A's Ceph client is cut off at the storage
                # while it still has a route to the monitors and the OSD. (After B's first
                # write: cut completely, each probe waits out its 2 s timeout.)
                mon, osd = (cluster.address, cluster.v2_port), (cluster.address, _osd_port(cluster))
                for service in (mon, osd):
                    reached = await asyncio.to_thread(st.net_a.reaches, *service)
                    assert reached == (cut == "nats"), f"A reaches {service}: {reached} (cut {cut})"

                if cut == "nats":
                    # A's client still talks to Ceph: its writes fail from the fence on.
                    after = await failed_after(writer_a, fenced_ns)
                    print(f"{kind}, cut from NATS: A's writes after the fence fail with {_errnos(after)}")

                await refused_while_partitioned(st, vid, ctx_a)
                await heal_and_stay_fenced(st, vid, ctx_a, target_a)
                # A rejoining did not lift its own fence at the storage.
                assert addr_matches(addr_a, await backend.blocklist_entries()), "A's blocklist entry went"
                await acks(writer_b, len(writer_b.read().acked) + 5)  # B undisturbed
                assert (await st.node("node-a"))["state"] == "fenced"

                # Every write A issued after the fence failed (cut completely, they hung
                # until the heal, when A's node service cut its Ceph clients off).
                after = await failed_after(writer_a, fenced_ns)
                print(f"{kind}, cut {cut}: A's writes after the fence, by the end, fail with {_errnos(after)}")
                judge_on_b(writer_a, writer_b, target_b, fenced_ns)
            finally:
                writer_a.stop()
                if writer_b is not None:
                    writer_b.stop()
            await asyncio.to_thread(st.b.unpublish_and_unstage, vid)
            await reboot_unfences(st, tmp_path / "boot_id-a")
            assert not addr_matches(addr_a, await backend.blocklist_entries()), "unfenced, A is still blocklisted"
    finally:
        await backend.close()


def _errnos(attempts: list[Attempt]) -> str:
    codes = sorted({a.errno for a in attempts})
    return ", ".join(f"{errno.errorcode.get(c, c)} ({c})" for c in codes)

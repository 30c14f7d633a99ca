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
from collections.abc import Iterator
from pathlib import Path

import pytest
from partition_harness import (
    acks,
    cut_and_take_over,
    heal_and_stay_fenced,
    judge_on_b,
    lab_or_skip,
    partition_stack,
    reboot_unfences,
    refused_while_partitioned,
    write_on_b,
)

from berth_provisioner.config import ProvisionerSettings
from berth_shared.node import cut_off_file, mounts
from berth_testing import MakeSettings, Tenants, loop_skip_reason
from berth_testing.netns import Lab
from berth_testing.seqwrite import Writer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(loop_skip_reason() is not None, reason=loop_skip_reason() or ""),
]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_or_skip() as made:
        yield made


def _clear_volumes(settings: ProvisionerSettings) -> None:
    """Whatever a failed test left on the volumes' files (mounts, loop devices) goes."""
    cluster_root = (settings.data_dir / "clusters" / "local").resolve()
    for path in cluster_root.rglob("*.img") if cluster_root.exists() else []:
        with contextlib.suppress(Exception):
            cut_off_file(path)


@pytest.mark.parametrize("cut", ["nats", "all"])
async def test_partitioned_holder_is_fenced_before_the_volume_moves(
    make_settings: MakeSettings, tenants: Tenants, lab: Lab, cut: str, tmp_path: Path
) -> None:
    async with partition_stack(make_settings, tenants, lab, cleanup=_clear_volumes) as st:
        vid = await st.create_volume("standard")
        ctx_a = await st.publish(vid, "node-a")
        target_a = await asyncio.to_thread(st.a.stage_and_publish, vid, ctx_a)
        writer_a = Writer(target_a, "node-a", tmp_path / "writer-a.log").start()
        writer_b: Writer | None = None
        try:
            await acks(writer_a, 5)

            over = await cut_and_take_over(st, vid, ctx_a, cut)
            fenced_ns = over.fenced_ns
            target_b, writer_b = await write_on_b(st, vid, over, tmp_path / "writer-b.log")
            print(f"file, cut {cut}: {over.timings(writer_b)}")

            # A's writes fail from the fence on: the file system under them is shut down.
            log_a = writer_a.read()
            after = [x for x in log_a.attempts if x.issued_ns >= fenced_ns]
            assert after and all(x.errno == errno.EIO for x in after), after[:5]

            await refused_while_partitioned(st, vid, ctx_a)
            # The file backend's fence ran on this host, which is A's: A's mount is gone.
            assert not mounts.is_mounted(st.a.staging_path(vid))
            await heal_and_stay_fenced(st, vid, ctx_a, target_a)
            await acks(writer_b, len(writer_b.read().acked) + 5)  # B undisturbed
            assert (await st.node("node-a"))["state"] == "fenced"

            judge_on_b(writer_a, writer_b, target_b, fenced_ns)
        finally:
            writer_a.stop()
            if writer_b is not None:
                writer_b.stop()
        await asyncio.to_thread(st.b.unpublish_and_unstage, vid)
        await reboot_unfences(st, tmp_path / "boot_id-a")

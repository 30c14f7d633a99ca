"""Single writer, fence before failover, on real loop devices and mounts."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest
from attacher_harness import stack

from berth_attacher.agent import NodeAgent
from berth_shared.errors import FailedPrecondition
from berth_shared.node import host
from berth_testing import MakeSettings, Tenants, eventually, needs_loop
from berth_testing.single_writer import play_reboot


@needs_loop
async def test_dead_node_is_fenced_then_volume_moves_with_its_data(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with stack(make_settings, tenants, tmp_path) as st:
        vol = await st.volume("pg-0")
        a = await st.agent("node-a")
        b = await st.agent("node-b")
        held = await a.publish_and_stage(vol["id"])
        data = Path(held.mount) / "table.dat"
        data.write_bytes(b"committed row\n")
        os.sync()
        # A writer on node-a that keeps its file open through what follows.
        writer = open(Path(held.mount) / "wal.log", "wb", buffering=0)  # noqa: SIM115

        with pytest.raises(FailedPrecondition) as conflict:
            await b.publish_and_stage(vol["id"])
        assert conflict.value.extra.get("holder") == "node-a"
        assert "node-a" in conflict.value.detail

        # node-a goes silent but keeps its mount, like a partitioned node.
        await a.stop()
        await eventually(lambda: _state_is(st, "node-a", "fenced"), what="node-a fenced")

        # The fence cut node-a's file system off: its writer's next write fails.
        with pytest.raises(OSError) as cut:
            writer.write(b"split brain")
            os.fsync(writer.fileno())
        assert cut.value.errno == errno.EIO
        with contextlib.suppress(OSError):
            writer.close()
        assert host.loops_backed_by(held.path) == []
        assert not host.is_mounted(held.mount)

        moved = await b.publish_and_stage(vol["id"])
        assert (Path(moved.mount) / "table.dat").read_bytes() == b"committed row\n"
        wal = Path(moved.mount) / "wal.log"
        assert not wal.exists() or b"split brain" not in wal.read_bytes()

        atts = (await st.att.get("/v1/attachments", params={"volume_id": vol["id"]}, headers=st.h(tenants.a))).json()
        states = {x["node_id"]: x["state"] for x in atts["items"]}
        assert states == {"node-a": "released", "node-b": "attached"}

        # node-a comes back (its partition heals): it learns it is fenced and drops its stale
        # state, but it stays fenced: it has not restarted since the fence.
        a.start()
        await eventually(lambda: a.beats.unfence_refused == "node_not_restarted", what="node-a refused")
        assert a.held == {} and await _state_is(st, "node-a", "fenced")
        # Once it has restarted (a new boot id) its own request unfences it.
        play_reboot(a)
        # The attacher commits the unfence before the agent has read its answer: wait for both.
        await eventually(lambda: _agent_back(st, a), what="node-a unfenced")
        node = await st.node("node-a")
        assert node["boot_id"] == a.boot_id and node["state_reason"].startswith("unfenced: restarted")
        assert a.held == {}
        with pytest.raises(FailedPrecondition):
            await a.publish_and_stage(vol["id"])


async def _state_is(st: object, node_id: str, state: str) -> bool:
    node = await st.node(node_id)  # type: ignore[attr-defined]
    return bool(node["state"] == state)


async def _agent_back(st: object, agent: NodeAgent) -> bool:
    return not agent.fenced and await _state_is(st, agent.node_id, "alive")

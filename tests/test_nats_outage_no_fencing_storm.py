"""A NATS outage longer than the grace period must not fence the nodes that were alive
(issue 5: flapping does not cause fencing storms).

While nats-server is down no heartbeat reaches the attacher, through no fault of the
nodes. When it is back, the nodes' silence must be counted from the moment the attacher
can hear them again, not from their last heartbeat before the outage; otherwise every node
would be declared dead on the first liveness pass and fenced, up to the cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from berth_procs import ServiceProcess

from berth_attacher.agent import NodeAgent
from berth_shared.bus import Bus
from berth_shared.natsserver import NatsServer
from berth_testing import Tenants
from berth_testing.single_writer import node_state, wait_node_state

pytestmark = pytest.mark.slow

DEAD_AFTER_S = 1.5
POLICY = {
    "BERTH_DEAD_AFTER_S": str(DEAD_AFTER_S),
    "BERTH_HEARTBEAT_INTERVAL_S": "0.2",
    "BERTH_MONITOR_INTERVAL_S": "0.1",
}
OUTAGE_S = 8.0  # > the grace period and > the monitor lease TTL (5 s): the lease lapses too


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-own")
    server.start()
    yield server
    server.stop(kill=True)


async def test_nodes_alive_through_a_nats_outage_are_not_fenced(
    own_nats: NatsServer, service_process: Callable[..., ServiceProcess], tenants: Tenants
) -> None:
    prov = service_process("provisioner", nats_url=own_nats.url)
    att = service_process("attacher", nats_url=own_nats.url, extra_env=POLICY)
    prov.start()
    att.start()
    await prov.wait_ready()
    await att.wait_ready()
    async with prov.client(tenants.a) as client:
        r = await client.post("/v1/volumes", json={"name": "v", "size_gib": 1, "volume_type": "standard"})
    assert r.status_code == 201, r.text
    vid = r.json()["id"]

    buses: list[Bus] = []
    agents: list[NodeAgent] = []
    http = att.client(tenants.admin)
    try:
        for node_id in ("node-a", "node-b"):
            bus = await Bus.connect(own_nats.url, f"agent-{node_id}")
            buses.append(bus)
            agent = NodeAgent(bus, node_id, tenants.admin, interval_s=0.2)
            await agent.heartbeat()
            agent.start()
            agents.append(agent)
        # A grant that a wrongful fence would release (published, not staged: no loop device).
        await buses[0].request(
            "berth.attacher.volume.publish", {"volume_id": vid, "node_id": "node-a"}, token=tenants.admin
        )

        own_nats.stop(kill=True)
        await asyncio.sleep(OUTAGE_S)  # the outage itself: nothing to poll while NATS is down
        await asyncio.to_thread(own_nats.start)

        # Every node heartbeats again once its connection is back; give the monitor many
        # passes (0.1 s each) and more than the grace period to get it wrong.
        for agent in agents:
            await wait_node_state(http, tenants.admin, agent.node_id, ["alive"], within_s=10.0)
        deadline = time.monotonic() + 2 * DEAD_AFTER_S
        while time.monotonic() < deadline:
            for agent in agents:
                assert await node_state(http, tenants.admin, agent.node_id) in ("alive", "suspect", None)
            await asyncio.sleep(0.05)
        fences = (await http.get("/v1/fences")).json()["items"]
        assert fences == [], [(f["node_id"], f["reason"]) for f in fences]
        items = (await http.get("/v1/attachments", params={"volume_id": vid})).json()["items"]
        assert [(a["node_id"], a["state"]) for a in items] == [("node-a", "attached")]
    finally:
        for agent in agents:
            await agent.stop()
        for bus in buses:
            await bus.close()
        await http.aclose()

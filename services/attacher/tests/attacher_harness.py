"""A provisioner and an attacher in-process on one nats-server, with node agents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from berth_attacher.agent import NodeAgent
from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.bus import Bus
from berth_testing import MakeSettings, Tenants, running


@dataclass
class Stack:
    prov: httpx.AsyncClient
    att: httpx.AsyncClient
    bus: Bus
    tenants: Tenants
    mount_root: Path
    agents: list[NodeAgent]

    def h(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def volume(self, name: str = "vol", size_gib: int = 1, volume_type: str = "standard") -> dict[str, Any]:
        r = await self.prov.post(
            "/v1/volumes",
            json={"name": name, "size_gib": size_gib, "volume_type": volume_type},
            headers=self.h(self.tenants.a),
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def agent(self, node_id: str, interval_s: float = 0.2, **kw: Any) -> NodeAgent:
        agent = NodeAgent(
            self.bus, node_id, self.tenants.admin, interval_s=interval_s, mount_root=self.mount_root, **kw
        )
        await agent.heartbeat()
        agent.start()
        self.agents.append(agent)
        return agent

    async def node(self, node_id: str) -> dict[str, Any]:
        r = await self.att.get(f"/v1/nodes/{node_id}", headers=self.h(self.tenants.admin))
        assert r.status_code == 200, r.text
        return dict(r.json())


@asynccontextmanager
async def stack(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, **policy: Any) -> AsyncIterator[Stack]:
    prov_settings = make_settings(ProvisionerSettings)
    att_settings = make_settings(
        AttacherSettings,
        **({"heartbeat_interval_s": 0.2, "dead_after_s": 1.5, "monitor_interval_s": 0.1} | policy),
    )
    async with AsyncExitStack() as es:
        prov = await es.enter_async_context(running(provisioner_app(prov_settings)))
        att = await es.enter_async_context(running(attacher_app(att_settings)))
        bus = await Bus.connect(prov_settings.nats_url, "test-agents")
        st = Stack(prov, att, bus, tenants, tmp_path / "mounts", [])
        try:
            yield st
        finally:
            for agent in st.agents:
                await agent.stop()
                for volume_id in list(agent.held):
                    await agent.release(volume_id)
            await bus.close()

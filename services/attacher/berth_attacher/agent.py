"""A small node agent: heartbeats for one node, stages file-backend volumes on this host,
and on a fence drops every stale mount before asking to be unfenced.

The CSI node service does the same through its own stage calls; this agent is what tests
(and a node without CSI) run: `python -m berth_attacher.agent --node-id N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from berth_shared.bus import Bus
from berth_shared.errors import BerthError
from berth_shared.messages.attacher import PREFIX, Attachment, HeartbeatReply, StagedVolume
from berth_shared.node import file as file_node

log = logging.getLogger(__name__)


@dataclass
class Held:
    volume_id: str
    path: Path
    mount: str
    device: str


class NodeAgent:
    def __init__(
        self,
        bus: Bus,
        node_id: str,
        token: str,
        *,
        interval_s: float = 2.0,
        zone: str | None = None,
        mount_root: Path = Path("/var/lib/berth/mounts"),
    ) -> None:
        self.bus = bus
        self.node_id = node_id
        self.token = token
        self.interval_s = interval_s
        self.zone = zone
        self.mount_root = mount_root
        self.boot_id = uuid.uuid4().hex
        self.held: dict[str, Held] = {}
        self.fenced = False
        self.last_reply: HeartbeatReply | None = None
        self._task: asyncio.Task[None] | None = None

    async def heartbeat(self) -> HeartbeatReply:
        staged = [StagedVolume(volume_id=h.volume_id, device=h.device, mount=h.mount) for h in self.held.values()]
        reply = await self.bus.request_model(
            f"{PREFIX}.node.heartbeat",
            {"node_id": self.node_id, "boot_id": self.boot_id, "zone": self.zone, "staged": [s.model_dump() for s in staged]},
            HeartbeatReply,
            token=self.token,
            timeout=max(1.0, self.interval_s),
        )
        self.last_reply = reply
        if reply.fenced and not self.fenced:
            self.fenced = True
            log.warning("node %s is fenced (epoch %d): dropping its mounts", self.node_id, reply.fence_epoch)
        if self.fenced and reply.state == "fenced":
            await self.recover()
        if not reply.fenced:
            self.fenced = False
        return reply

    async def recover(self) -> None:
        """After a fence: drop every stale mount, then prove it by asking to be unfenced."""
        for volume_id in list(self.held):
            await self.release(volume_id)
        try:
            await self.bus.request(
                f"{PREFIX}.node.unfence",
                {"node_id": self.node_id, "boot_id": self.boot_id, "staged": []},
                token=self.token,
            )
            self.fenced = False
        except BerthError as exc:
            log.info("unfence refused for %s: %s", self.node_id, exc.detail)

    async def publish_and_stage(self, volume_id: str, *, readonly: bool = False) -> Held:
        """Ask the attacher for the volume (raises FailedPrecondition if another node holds it),
        then attach and mount it here."""
        if self.fenced:
            raise RuntimeError(f"node {self.node_id} is fenced; it may not stage volumes")
        att = await self.bus.request_model(
            f"{PREFIX}.volume.publish",
            {"volume_id": volume_id, "node_id": self.node_id, "readonly": readonly},
            Attachment,
            token=self.token,
        )
        path = Path(att.publish_context["path"])
        mount = str(self.mount_root / self.node_id / volume_id)
        staged = await file_node.stage(path, mount, readonly=readonly)
        held = Held(volume_id, path, mount, staged.device)
        self.held[volume_id] = held
        return held

    async def release(self, volume_id: str) -> None:
        held = self.held.pop(volume_id, None)
        if held is not None:
            await file_node.unstage(held.path, held.mount)
            with contextlib.suppress(OSError):
                os.rmdir(held.mount)

    async def unpublish(self, volume_id: str) -> None:
        await self.release(volume_id)
        await self.bus.request(
            f"{PREFIX}.volume.unpublish", {"volume_id": volume_id, "node_id": self.node_id}, token=self.token
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"agent-{self.node_id}")

    async def stop(self) -> None:
        """Stop heartbeating (the node 'dies'); mounts stay, as they would on a partitioned node."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat from %s failed: %s", self.node_id, exc)
            await asyncio.sleep(self.interval_s)


async def _main() -> None:
    parser = argparse.ArgumentParser(description="Berth node agent")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--nats-url", default=os.environ.get("BERTH_NATS_URL", "nats://127.0.0.1:4322"))
    parser.add_argument("--token", default=os.environ.get("BERTH_NODE_TOKEN"))
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--zone")
    args = parser.parse_args()
    if not args.token:
        parser.error("--token or BERTH_NODE_TOKEN is required (a token with the node or admin role)")
    logging.basicConfig(level=logging.INFO)
    bus = await Bus.connect(args.nats_url, f"agent-{args.node_id}")
    agent = NodeAgent(bus, args.node_id, args.token, interval_s=args.interval, zone=args.zone)
    agent.start()
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop()
        await bus.close()


if __name__ == "__main__":
    asyncio.run(_main())

"""A small node agent: heartbeats for one node, stages volumes on this host (file backend:
loop device; RBD: rbd-fuse/nbd/krbd + a file system; CephFS: ceph-fuse or the kernel
client, chosen by the publish context's `backend`), reports the Ceph client address of
each in its heartbeats, and on a fence drops every stale mount before asking to be unfenced.

The CSI node service does the same through its own stage calls; this agent is what tests
(and a node without CSI) run: `python -m berth_attacher.agent --node-id N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from berth_shared.bus import Bus
from berth_shared.errors import InvalidArgument
from berth_shared.logs import configure_logging
from berth_shared.messages.attacher import PREFIX, Attachment, HeartbeatReply, StagedVolume
from berth_shared.node import CephClientSpec, NodeHeartbeat, NodeSettings, ceph_stage
from berth_shared.node import file as file_node
from berth_shared.settings import load_settings

log = logging.getLogger(__name__)


@dataclass
class Held:
    volume_id: str
    path: Path  # the file backend's volume file; for Ceph, the image or subvolume path
    mount: str
    device: str
    backend: str = "file"
    client_address: str | None = None  # the Ceph client this node uses for it: what a fence cuts
    ceph: ceph_stage.CephStaged | None = None


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
        ceph: dict[str, CephClientSpec] | None = None,
    ) -> None:
        """`ceph`: this node's cephx identity per backend kind ("rbd", "cephfs"); without
        one, the Ceph conventions (see berth_shared.node.ceph_stage)."""
        self.bus = bus
        self.node_id = node_id
        self.token = token
        self.interval_s = interval_s
        self.zone = zone
        self.mount_root = mount_root
        self.ceph = dict(ceph or {})
        self.held: dict[str, Held] = {}
        # The heartbeat and fence-recovery protocol is shared with the CSI node service.
        self.beats = NodeHeartbeat(
            bus, node_id, token, staged=self._staged, drop=self._drop_all, interval_s=interval_s, zone=zone
        )

    @property
    def boot_id(self) -> str:
        return self.beats.boot_id

    @property
    def fenced(self) -> bool:
        return self.beats.fenced

    @property
    def last_reply(self) -> HeartbeatReply | None:
        return self.beats.last_reply

    def _staged(self) -> list[StagedVolume]:
        return [
            StagedVolume(volume_id=h.volume_id, device=h.device, mount=h.mount, client_address=h.client_address)
            for h in self.held.values()
        ]

    async def _drop_all(self) -> None:
        for volume_id in list(self.held):
            await self.release(volume_id)

    async def heartbeat(self) -> HeartbeatReply:
        return await self.beats.beat()

    async def recover(self) -> None:
        """After a fence: drop every stale mount, then prove it by asking to be unfenced."""
        await self.beats.recover()

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
        ctx = att.publish_context
        kind = ctx.get("backend", "file")
        ceph_kind = ceph_stage.ceph_kind(kind)
        mount = str(self.mount_root / self.node_id / volume_id)
        if kind == "file":
            path = Path(ctx["path"])
            staged = await file_node.stage(path, mount, readonly=readonly)
            assert staged.device is not None  # a file volume is always on a loop device
            held = Held(volume_id, path, mount, staged.device)
        elif ceph_kind is not None:
            spec = ceph_stage.client_spec(ceph_kind, ctx, self.node_id, self.ceph.get(ceph_kind))
            cs = await ceph_stage.stage(
                ceph_kind,
                ctx,
                spec,
                node_id=self.node_id,
                volume_id=volume_id,
                mount=mount,
                workdir=self.mount_root / self.node_id / ".ceph",
                readonly=readonly,
            )
            source = Path(f"{ctx.get('pool')}/{ctx.get('image')}" if kind == "rbd" else ctx.get("path", ""))
            held = Held(volume_id, source, mount, cs.device or "", kind, cs.client_address, cs)
        else:
            raise InvalidArgument(f"this node cannot stage {kind!r} volumes", reason="backend_unsupported")
        self.held[volume_id] = held
        return held

    async def release(self, volume_id: str) -> None:
        held = self.held.pop(volume_id, None)
        if held is not None:
            if held.ceph is not None:
                # Fenced: the client is cut off, so do not wait for it to close cleanly.
                await ceph_stage.unstage(held.ceph, fenced=self.fenced, node_id=self.node_id)
            else:
                await file_node.unstage(held.path, held.mount)
            with contextlib.suppress(OSError):
                os.rmdir(held.mount)

    async def unpublish(self, volume_id: str) -> None:
        await self.release(volume_id)
        await self.bus.request(
            f"{PREFIX}.volume.unpublish", {"volume_id": volume_id, "node_id": self.node_id}, token=self.token
        )

    def start(self) -> None:
        self.beats.start()

    async def stop(self) -> None:
        """Stop heartbeating (the node 'dies'); mounts stay, as they would on a partitioned node."""
        await self.beats.stop()


class AgentSettings(NodeSettings):
    """The node agent's settings: the node side's (BERTH_NODE_ID, BERTH_NODE_TOKEN,
    BERTH_HEARTBEAT_INTERVAL_S, BERTH_CEPH_CONF, BERTH_RBD_USER, ...) and BERTH_ZONE; its
    command-line flags override them."""

    service: str = "node-agent"
    zone: str | None = None


def _settings(argv: list[str] | None = None) -> AgentSettings:
    parser = argparse.ArgumentParser(description="Berth node agent (flags override the BERTH_* variables)")
    parser.add_argument("--node-id")
    parser.add_argument("--nats-url")
    parser.add_argument("--token", dest="node_token", help="a token with the node or admin role")
    # The `node` NATS user's .creds (it may send attacher commands, nothing else).
    parser.add_argument("--nats-creds", type=Path)
    parser.add_argument("--interval", dest="heartbeat_interval_s", type=float)
    parser.add_argument("--zone")
    parser.add_argument("--ceph-conf")
    for kind in ceph_stage.KINDS:
        parser.add_argument(f"--{kind}-user", help=f"cephx id for {kind} volumes (without 'client.')")
        parser.add_argument(f"--{kind}-keyring", help="default: /etc/ceph/ceph.client.<user>.keyring")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return load_settings(AgentSettings, **given)


async def _main() -> None:
    settings = _settings()
    configure_logging(settings.service, settings.log_level, settings.log_json)
    token = settings.heartbeat_token()
    # A kind without a configured user keeps the conventions of berth_shared.node.ceph_stage.
    ceph = settings.configured_ceph()
    bus = await Bus.connect(settings.nats_url, f"agent-{settings.node_id}", creds=settings.nats_creds)
    agent = NodeAgent(
        bus, settings.node_id, token, interval_s=settings.heartbeat_interval_s, zone=settings.zone, ceph=ceph
    )
    agent.start()
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop()
        await bus.close()


if __name__ == "__main__":
    asyncio.run(_main())

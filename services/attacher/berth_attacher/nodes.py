"""Nodes: heartbeats from the node agents, signals from outside (Kubernetes), and reads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError

from berth_attacher import repo
from berth_attacher.context import Context, require_node_or_admin
from berth_attacher.lifecycle import NODE, AttachmentState, NodeState
from berth_shared.auth import Principal
from berth_shared.bus import SYSTEM_TENANT
from berth_shared.clock import now
from berth_shared.errors import NotFound
from berth_shared.messages.attacher import Heartbeat, HeartbeatReply, Node, NodeList, NodeStatus

N = NodeState


def _unknown(node_id: str) -> NotFound:
    return NotFound(f"node {node_id} is unknown", reason="node_not_found")


async def node_row(ctx: Context, node_id: str) -> Row[Any]:
    async with ctx.db.sessions() as s:
        row = await repo.nodes.get(s, node_id)
    if row is None:
        raise _unknown(node_id)
    return row


class Nodes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def heartbeat(self, p: Principal, hb: Heartbeat) -> HeartbeatReply:
        require_node_or_admin(p)
        try:
            return await self._heartbeat(hb)
        except IntegrityError:
            # Two first heartbeats of one node raced to register it (the row lock cannot
            # cover a row that does not exist yet): the row is there now, so go again.
            return await self._heartbeat(hb)

    async def _heartbeat(self, hb: Heartbeat) -> HeartbeatReply:
        staged = [v.model_dump() for v in hb.staged]
        async with self.ctx.db.transaction() as s:
            # Row lock: a heartbeat must not set a node back to alive over a fence that
            # started after it read the node.
            node = await repo.nodes.get(s, hb.node_id, lock=True)
            if node is None:
                await repo.nodes.insert(
                    s,
                    id=hb.node_id,
                    state=N.ALIVE,
                    state_reason="first heartbeat",
                    zone=hb.zone,
                    boot_id=hb.boot_id,
                    last_heartbeat_at=now(),
                    staged=staged,
                    max_volumes=hb.max_volumes,
                    fence_epoch=0,
                    tainted=False,
                )
                data = {"node_id": hb.node_id, "zone": hb.zone}
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "registered", hb.node_id, data)
                self.ctx.events.notify()
                return HeartbeatReply(node_id=hb.node_id, state=N.ALIVE, fenced=False, fence_epoch=0)
            values: dict[str, Any] = {"last_heartbeat_at": now(), "staged": staged, "max_volumes": hb.max_volumes}
            if node.state not in (N.FENCING, N.FENCED):
                # A fenced node's boot id stays the one it was fenced with: the unfence
                # compares the node's with it to know whether the node restarted since.
                values["boot_id"] = hb.boot_id
            if hb.zone:
                values["zone"] = hb.zone
            # Talking again before any fence started: it was a blip, not a death.
            back = NODE.allows(node.state, "heard")
            if back:
                await repo.nodes.move(s, hb.node_id, node.state, "heard", state_reason="heartbeat resumed", **values)
            else:
                await repo.nodes.change(s, hb.node_id, **values)
            if back and node.state != N.SUSPECT:
                data = {"node_id": hb.node_id, "was": node.state}
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "recovered", hb.node_id, data)
            fenced = node.state in (N.FENCING, N.FENCED)
            blocked: list[str] = []
            if fenced:
                released = await repo.attachments.on_node(s, hb.node_id, AttachmentState.RELEASED)
                blocked = [r.volume_id for r in released]
            state = N.ALIVE if back else node.state
        if back:
            self.ctx.events.notify()
        return HeartbeatReply(
            node_id=hb.node_id, state=state, fenced=fenced, fence_epoch=node.fence_epoch, blocked_volumes=blocked
        )

    async def status(self, p: Principal, st: NodeStatus) -> Node:
        p.require_admin()
        values: dict[str, Any] = {}
        if st.ready is not None:
            values["ready"] = st.ready
        if st.out_of_service is not None:
            values["out_of_service"] = st.out_of_service
        async with self.ctx.db.transaction() as s:
            if not await repo.nodes.change(s, st.node_id, **values):
                raise _unknown(st.node_id)
            row = await repo.nodes.get(s, st.node_id)
            assert row is not None
        return repo.nodes.out(row)

    async def get(self, p: Principal, node_id: str) -> Node:
        require_node_or_admin(p)
        return repo.nodes.out(await node_row(self.ctx, node_id))

    async def list(self, p: Principal) -> NodeList:
        require_node_or_admin(p)
        async with self.ctx.db.sessions() as s:
            rows = await repo.nodes.all_rows(s)
        return NodeList(items=[repo.nodes.out(r) for r in rows])

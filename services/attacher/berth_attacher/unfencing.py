"""Unfencing: a fenced node gets its storage access back only once it holds nothing (its
agent reports no staged volume, or an admin vouches for it), and never while someone else
has declared it out of service."""

from __future__ import annotations

from typing import Any

from berth_attacher import repo
from berth_attacher.context import Context, require_node_or_admin
from berth_attacher.fence_targets import per_cluster
from berth_attacher.lifecycle import NodeState
from berth_attacher.nodes import node_row
from berth_shared.auth import Principal
from berth_shared.bus import SYSTEM_TENANT
from berth_shared.clock import now
from berth_shared.errors import FailedPrecondition
from berth_shared.messages.attacher import Node, UnfenceRequest


class Unfencing:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def request(self, p: Principal, req: UnfenceRequest) -> Node:
        require_node_or_admin(p)
        if self.ctx.policy.unfence_mode == "manual" and not p.is_admin:
            raise FailedPrecondition(
                "unfencing needs an admin under the manual unfence policy", reason="unfence_needs_admin"
            )
        return await self._unfence(req.node_id, req.staged)

    async def by_admin(self, p: Principal, node_id: str) -> Node:
        p.require_admin()
        return await self._unfence(node_id, [])

    async def _unfence(self, node_id: str, staged: list[Any]) -> Node:
        row = await node_row(self.ctx, node_id)
        if row.state != NodeState.FENCED:
            raise FailedPrecondition(f"node {node_id} is {row.state}, not fenced", reason="node_not_fenced")
        if staged:
            names = ", ".join(v.volume_id for v in staged)
            raise FailedPrecondition(
                f"node {node_id} still holds {len(staged)} volume(s) ({names}); drop them before unfencing",
                reason="stale_mounts",
            )
        if self.ctx.policy.honour_out_of_service and row.out_of_service and not row.tainted:
            # Someone else declared it out of service: unfenced now, it would be fenced again at once.
            raise FailedPrecondition(
                f"node {node_id} is declared out of service; clear that before unfencing it",
                reason="node_out_of_service",
            )
        async with self.ctx.db.sessions() as s:
            fence = await repo.fences.of_epoch(s, node_id, row.fence_epoch)
        if fence is not None:
            for cluster_id, kind, config, target in per_cluster(fence.targets, node_id):
                await self.ctx.locator.backend(cluster_id, kind, config).unfence(target)
        async with self.ctx.db.transaction() as s:
            # Our own out-of-service taint, reported back, is about to go: it is no signal.
            extra = {"out_of_service": None} if row.tainted else {}
            values = {"state_reason": "unfenced", "last_heartbeat_at": now(), **extra}
            if await repo.nodes.move(s, node_id, NodeState.FENCED, "unfenced", **values):
                await repo.fences.mark_unfenced(s, node_id)
                data = {"node_id": node_id, "epoch": row.fence_epoch}
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "unfenced", node_id, data)
        self.ctx.events.notify()
        if self.ctx.tainter and row.tainted:
            await self.ctx.tainter.untaint(node_id)
            async with self.ctx.db.transaction() as s:
                await repo.nodes.change(s, node_id, tainted=False)
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "untainted", node_id, {"node_id": node_id})
            self.ctx.events.notify()
        return repo.nodes.out(await node_row(self.ctx, node_id))

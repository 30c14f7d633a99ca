"""Unfencing: a fenced node gets its storage access back only once it holds nothing and
has restarted since the fence (its agent reports no staged volume and a boot id other than
the one it had when it was fenced), or an admin vouches for it; never while someone else
has declared it out of service. Which of the two it was is recorded (the node's
state_reason and the `node.unfenced` event's `by`).

Why the restart: a partitioned node that heals has dropped its mounts, but it is the same
kernel that was cut off mid-write, with whatever it still caches or retries; only a reboot
(or a person who looked) makes it a clean node again."""

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

# Who unfenced a node: the node itself, restarted and holding nothing, or an admin.
RESTARTED, ADMIN = "node_restarted", "admin"
REASONS = {
    RESTARTED: "unfenced: restarted since the fence (boot id changed) and holds nothing",
    ADMIN: "unfenced by an admin",
}


class Unfencing:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def request(self, p: Principal, req: UnfenceRequest) -> Node:
        require_node_or_admin(p)
        if self.ctx.policy.unfence_mode == "manual" and not p.is_admin:
            raise FailedPrecondition(
                "unfencing needs an admin under the manual unfence policy", reason="unfence_needs_admin"
            )
        # The node's own proof, whoever sends it (a node running with an admin token too): an
        # admin who vouches for a node without it uses `by_admin` (/force-unfence).
        return await self._unfence(req.node_id, req.staged, by=RESTARTED, boot_id=req.boot_id)

    async def by_admin(self, p: Principal, node_id: str) -> Node:
        p.require_admin()
        return await self._unfence(node_id, [], by=ADMIN)

    async def _unfence(self, node_id: str, staged: list[Any], *, by: str, boot_id: str | None = None) -> Node:
        row = await node_row(self.ctx, node_id)
        if row.state != NodeState.FENCED:
            raise FailedPrecondition(f"node {node_id} is {row.state}, not fenced", reason="node_not_fenced")
        if by == RESTARTED and boot_id == row.boot_id:
            # nodes.boot_id is not updated while a node is fenced: it is the fenced boot's.
            raise FailedPrecondition(
                f"node {node_id} has not restarted since it was fenced (boot id {boot_id} unchanged): "
                "it stays fenced until it reboots or an admin unfences it",
                reason="node_not_restarted",
            )
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
            extra: dict[str, Any] = {"out_of_service": None} if row.tainted else {}
            if boot_id is not None:
                extra["boot_id"] = boot_id
            values = {"state_reason": REASONS[by], "last_heartbeat_at": now(), **extra}
            if await repo.nodes.move(s, node_id, NodeState.FENCED, "unfenced", **values):
                await repo.fences.mark_unfenced(s, node_id)
                data = {"node_id": node_id, "epoch": row.fence_epoch, "by": by}
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "unfenced", node_id, data)
        self.ctx.events.notify()
        if self.ctx.tainter and row.tainted:
            await self.ctx.tainter.untaint(node_id)
            async with self.ctx.db.transaction() as s:
                await repo.nodes.change(s, node_id, tainted=False)
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "untainted", node_id, {"node_id": node_id})
            self.ctx.events.notify()
        return repo.nodes.out(await node_row(self.ctx, node_id))

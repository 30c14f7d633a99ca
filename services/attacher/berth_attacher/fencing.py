"""Liveness and fencing: the liveness pass over the nodes, the decision to fence a dead one
(or defer it, or wait for an admin), and the fence itself, which cuts the node off at the
storage and only then releases its grants, in the transaction that records the fence done.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row

from berth_attacher import repo
from berth_attacher import tables as t
from berth_attacher.context import Context
from berth_attacher.fence_targets import fence_targets, per_cluster
from berth_attacher.lifecycle import (
    FENCED_OR_FENCING,
    MONITORED_NODE_STATES,
    NODE,
    AttachmentState,
    NodeState,
)
from berth_attacher.liveness import NodeView, assess, may_fence
from berth_attacher.nodes import node_row
from berth_shared.auth import Principal
from berth_shared.bus import SYSTEM_TENANT
from berth_shared.clock import now
from berth_shared.db import Database
from berth_shared.faults import checkpoint, pause
from berth_shared.ids import new_id
from berth_shared.messages.attacher import Fence, FenceList, Node, NodeDown
from berth_shared.operations import OperationRunner, RetryPolicy
from berth_shared.telemetry import Metrics

log = logging.getLogger(__name__)
FENCE = "fence"  # the runner's one kind of operation here
# A node's grants are never released without a completed fence: every error is retried, for ever.
FENCE_RETRY = RetryPolicy(max_attempts=None, transient=(Exception,), max_delay_s=10.0)
DEFERRED = "; fence deferred: "
N = NodeState


def fence_runner(db: Database, owner: str, lease_s: float, metrics: Metrics | None = None) -> OperationRunner:
    return OperationRunner(
        db, t.fences, owner, timedelta(seconds=lease_s), FENCE_RETRY, kind_of=lambda _fence: FENCE, metrics=metrics
    )


class Fencing:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # The shared operation runner runs fences (ctx.runner): a step of it renews the
        # fence's lease while the backend cuts, and a replica that crashed mid-fence has its
        # fence taken over by another once the lease lapses. The fence is never given up.
        ctx.runner.register(FENCE, self._cut, self._finish)
        # Since when this replica could hear heartbeats (set by the liveness loop at start
        # and after every NATS reconnection): no node's silence is counted from before it.
        self.heard_since: datetime | None = None

    # -- admin -------------------------------------------------------------------------

    async def node_down(self, p: Principal, req: NodeDown) -> Node:
        """An admin says the node is down: treated as dead now, fenced as the policy allows."""
        p.require_admin()
        row = await node_row(self.ctx, req.node_id)
        if row.state in (N.ALIVE, N.SUSPECT):
            await self._on_dead(row, f"admin: {req.reason}")
        return repo.nodes.out(await node_row(self.ctx, req.node_id))

    async def approve(self, p: Principal, node_id: str) -> Node:
        """Manual mode: an admin approves fencing a dead node (also overrides the rate limit)."""
        p.require_admin()
        row = await node_row(self.ctx, node_id)
        if row.state in FENCED_OR_FENCING:
            return repo.nodes.out(row)
        await self._start(row, "fence approved by an admin", enforce_limits=False)
        return repo.nodes.out(await node_row(self.ctx, node_id))

    async def list_fences(self, p: Principal, node_id: str | None) -> FenceList:
        p.require_admin()
        async with self.ctx.db.sessions() as s:
            rows = await repo.fences.listing(s, node_id)
        return FenceList(items=[Fence.model_validate(r._mapping) for r in rows])

    # -- liveness ----------------------------------------------------------------------

    async def monitor_once(self) -> None:
        """One pass of the liveness policy over every node (run by the lease holder only)."""
        async with self.ctx.db.sessions() as s:
            rows = await repo.nodes.all_rows(s, MONITORED_NODE_STATES)
        at = now()
        for row in rows:
            if row.state == N.DEAD:
                # Retry a deferred fence with the original reason (not one more "deferred" per pass).
                await self._on_dead(row, (row.state_reason or "dead").split(DEFERRED)[0])
                continue
            seen = row.last_heartbeat_at or row.created_at
            if self.heard_since is not None:
                # A NATS outage or an attacher restart silences every node at once, through
                # no fault of theirs: that silence must not make them dead.
                seen = max(seen, self.heard_since)
            verdict, why = assess(
                NodeView(row.id, row.state, seen, row.created_at, row.ready, row.out_of_service),
                at,
                self.ctx.policy,
            )
            if verdict == "dead":
                await self._on_dead(row, why)
            elif verdict != row.state:
                async with self.ctx.db.transaction() as s:
                    event = "silent" if verdict == "suspect" else "heard"
                    await repo.nodes.move(s, row.id, row.state, event, state_reason=why)

    async def _on_dead(self, row: Row[Any], why: str) -> None:
        if self.ctx.policy.fence_mode == "manual":
            why = f"{why}; waiting for an admin to approve the fence"
            await self._set_state(row, "await_approval", why, "awaiting_fence_approval")
            return
        await self._start(row, why, enforce_limits=True)

    async def _set_state(self, row: Row[Any], event: str, why: str, verb: str) -> None:
        async with self.ctx.db.transaction() as s:
            moved = await repo.nodes.move(s, row.id, row.state, event, state_reason=why)
            if moved and row.state != NODE.target(row.state, event):
                data = {"node_id": row.id, "reason": why}
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", verb, row.id, data)
        self.ctx.events.notify()

    # -- the fence ---------------------------------------------------------------------

    async def _start(self, row: Row[Any], why: str, *, enforce_limits: bool) -> None:
        if enforce_limits:
            at = now()
            async with self.ctx.db.sessions() as s:
                fenced_now = await repo.nodes.count_in(s, FENCED_OR_FENCING)
                recent = await repo.fences.started_since(s, at - timedelta(seconds=self.ctx.policy.fence_window_s))
            blocked = may_fence(now(), fenced_now, recent, self.ctx.policy)
            if blocked:
                await self._set_state(row, "fence_deferred", f"{why}{DEFERRED}{blocked}", "fence_deferred")
                return
        fence_id = new_id("fence")
        async with self.ctx.db.transaction() as s:
            # Lock the node first, then read its grants: no publish to it can commit in between.
            node = await repo.nodes.get(s, row.id, lock=True)
            assert node is not None
            if not NODE.allows(node.state, "fence"):
                return  # someone else moved it on
            atts = await repo.attachments.on_node(s, row.id, AttachmentState.ATTACHED)
            epoch = node.fence_epoch + 1
            if not await repo.nodes.move(s, row.id, node.state, "fence", state_reason=why, fence_epoch=epoch):
                return
            await repo.fences.insert(
                s,
                **self.ctx.runner.values(
                    fence_id,
                    node_id=row.id,
                    epoch=epoch,
                    reason=why,
                    results={},
                    targets=fence_targets(atts, node.staged or []),
                ),
            )
            data = {"node_id": row.id, "epoch": epoch, "reason": why}
            await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "fencing", row.id, data)
        self.ctx.events.notify()
        self.ctx.runner.launch(fence_id)

    async def _cut(self, fence: dict[str, Any]) -> None:
        """Cut the node off at the storage, cluster by cluster. Every backend's fence is
        idempotent: after a crash here, the replica that takes over cuts again."""
        checkpoint("fence.before_backend")
        await pause("fence.before_backend")
        results: dict[str, list[str]] = {}
        for cluster_id, kind, config, target in per_cluster(fence["targets"], fence["node_id"]):
            backend = self.ctx.locator.backend(cluster_id, kind, config)
            results[cluster_id] = await backend.fence(target)
        checkpoint("fence.after_backend")
        fence["results"] = results

    async def _finish(self, fence: dict[str, Any]) -> bool:
        """Record the fence done and only then release the node's grants, in one transaction;
        the fence's row closes in it (so the runner has nothing more to write)."""
        node_id, epoch, results = fence["node_id"], fence["epoch"], fence["results"]
        async with self.ctx.db.transaction() as s:
            if not await repo.fences.complete(s, fence["id"], results):
                return True
            await repo.nodes.move(
                s, node_id, N.FENCING, "fenced", fenced_at=now(), state_reason=f"fenced (epoch {epoch})"
            )
            atts = await repo.attachments.on_node(s, node_id, AttachmentState.ATTACHED)
            await repo.attachments.release_node(s, node_id)
            for att in atts:
                data = repo.attachments.out(att).model_dump(mode="json")
                data |= {"state": AttachmentState.RELEASED.value, "fence_epoch": epoch}
                await self.ctx.events.emit(s, att.tenant, "attachment", "released", att.id, data)
            released = [a.volume_id for a in atts]
            data = {"node_id": node_id, "epoch": epoch, "results": results, "released": released}
            await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "fenced", node_id, data)
        self.ctx.events.notify()
        if self.ctx.tainter:
            # Only after a completed fence: the taint makes Kubernetes detach and reschedule.
            try:
                await self.ctx.tainter.taint(node_id)
            except Exception as exc:
                log.error("could not taint node %s: %s", node_id, exc)
                return True
            async with self.ctx.db.transaction() as s:
                await repo.nodes.change(s, node_id, tainted=True)
                data = {"node_id": node_id, "epoch": epoch}
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "tainted", node_id, data)
            self.ctx.events.notify()
        return True

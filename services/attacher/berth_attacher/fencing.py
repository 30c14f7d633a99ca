"""Liveness and fencing: the liveness pass over the nodes, the decision to fence a dead one
(or defer it, or wait for an admin), and the fence itself, which cuts the node off at the
storage and only then releases its grants, in the transaction that records the fence done.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row

from berth_attacher import repo
from berth_attacher.context import Context
from berth_attacher.fence_targets import fence_targets, per_cluster
from berth_attacher.lifecycle import (
    FENCED_OR_FENCING,
    MONITORED_NODE_STATES,
    NODE,
    AttachmentState,
    FenceState,
    NodeState,
)
from berth_attacher.liveness import NodeView, assess, may_fence
from berth_attacher.nodes import node_row
from berth_shared.auth import Principal
from berth_shared.bus import SYSTEM_TENANT
from berth_shared.clock import now
from berth_shared.ids import new_id
from berth_shared.messages.attacher import Fence, FenceList, Node, NodeDown

log = logging.getLogger(__name__)
FENCE_LEASE = timedelta(seconds=30)
DEFERRED = "; fence deferred: "
N = NodeState


class Fencing:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._fencing: dict[str, asyncio.Task[None]] = {}
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
                id=fence_id,
                node_id=row.id,
                epoch=epoch,
                state=FenceState.PENDING,
                reason=why,
                results={},
                targets=fence_targets(atts, node.staged or []),
                owner=self.ctx.owner,
                lease_until=now() + FENCE_LEASE,
            )
            data = {"node_id": row.id, "epoch": epoch, "reason": why}
            await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "fencing", row.id, data)
        self.ctx.events.notify()
        self.launch(fence_id)

    def launch(self, fence_id: str) -> asyncio.Task[None]:
        task = self._fencing.get(fence_id)
        if task is None or task.done():
            task = asyncio.create_task(self._run(fence_id), name=f"fence-{fence_id}")
            self._fencing[fence_id] = task
            task.add_done_callback(lambda _t: self._fencing.pop(fence_id, None))
        return task

    async def _run(self, fence_id: str) -> None:
        delay = 0.2
        while True:
            async with self.ctx.db.transaction() as s:
                fence = await repo.fences.claim(s, fence_id, self.ctx.owner, FENCE_LEASE)
            if fence is None:
                return
            try:
                results: dict[str, list[str]] = {}
                for cluster_id, kind, config, target in per_cluster(fence.targets, fence.node_id):
                    backend = self.ctx.locator.backend(cluster_id, kind, config)
                    results[cluster_id] = await backend.fence(target)
                await self._finish(fence, results)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Never release without a completed fence: keep trying, loudly.
                log.error("fence %s of node %s failed, retrying: %s", fence_id, fence.node_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _finish(self, fence: Row[Any], results: dict[str, list[str]]) -> None:
        node_id = fence.node_id
        async with self.ctx.db.transaction() as s:
            if not await repo.fences.complete(s, fence.id, results):
                return
            await repo.nodes.move(
                s, node_id, N.FENCING, "fenced", fenced_at=now(), state_reason=f"fenced (epoch {fence.epoch})"
            )
            atts = await repo.attachments.on_node(s, node_id, AttachmentState.ATTACHED)
            await repo.attachments.release_node(s, node_id)
            for att in atts:
                data = repo.attachments.out(att).model_dump(mode="json")
                data |= {"state": AttachmentState.RELEASED.value, "fence_epoch": fence.epoch}
                await self.ctx.events.emit(s, att.tenant, "attachment", "released", att.id, data)
            released = [a.volume_id for a in atts]
            data = {"node_id": node_id, "epoch": fence.epoch, "results": results, "released": released}
            await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "fenced", node_id, data)
        self.ctx.events.notify()
        if self.ctx.tainter:
            # Only after a completed fence: the taint makes Kubernetes detach and reschedule.
            try:
                await self.ctx.tainter.taint(node_id)
            except Exception as exc:
                log.error("could not taint node %s: %s", node_id, exc)
                return
            async with self.ctx.db.transaction() as s:
                await repo.nodes.change(s, node_id, tainted=True)
                data = {"node_id": node_id, "epoch": fence.epoch}
                await self.ctx.events.emit(s, SYSTEM_TENANT, "node", "tainted", node_id, data)
            self.ctx.events.notify()

    async def resume(self) -> int:
        """Launch every pending fence this replica may run (its own, or lease expired)."""
        async with self.ctx.db.sessions() as s:
            ids = await repo.fences.claimable(s, self.ctx.owner)
        for fid in ids:
            self.launch(fid)
        return len(ids)

    async def stop(self) -> None:
        tasks = list(self._fencing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""The attacher's use cases: grants (publish/unpublish), node liveness, fencing, unfencing.

Safety argument in one line: an attachment leaves a node only in the same transaction that
records a completed storage-side fence of that node, so a node that is merely partitioned
can never share a single-writer volume with its successor.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Row, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_attacher import rules
from berth_attacher import tables as t
from berth_attacher.liveness import NodeView, Policy, assess, may_fence
from berth_attacher.locator import Locator
from berth_shared.auth import Principal
from berth_shared.backends import FenceTarget
from berth_shared.bus.envelope import SYSTEM_TENANT
from berth_shared.db import BusTables, Database, affected
from berth_shared.db.outbox import EventWriter, OutboxRelay
from berth_shared.errors import FailedPrecondition, NotFound, PermissionDenied
from berth_shared.messages.attacher import (
    Attachment,
    AttachmentList,
    AttachmentQuery,
    Fence,
    FenceList,
    Heartbeat,
    HeartbeatReply,
    Node,
    NodeDown,
    NodeList,
    NodeStatus,
    Publish,
    UnfenceRequest,
    Unpublish,
)

log = logging.getLogger(__name__)
SERVICE = "attacher"
NODE_ROLE = "node"
FENCE_LEASE = timedelta(seconds=30)
DEFERRED = "; fence deferred: "


def now() -> datetime:
    return datetime.now(UTC)


class Tainter(Protocol):
    """Applies/removes `node.kubernetes.io/out-of-service` where a Kubernetes API is configured."""

    async def taint(self, node_id: str) -> None: ...
    async def untaint(self, node_id: str) -> None: ...


def require_node_or_admin(p: Principal) -> None:
    if not (p.is_admin or NODE_ROLE in p.roles):
        raise PermissionDenied("node agents need the node (or admin) role")


def attachment_out(row: Row[Any]) -> Attachment:
    return Attachment.model_validate(row._mapping)


def node_out(row: Row[Any]) -> Node:
    return Node.model_validate(row._mapping)


class Attacher:
    def __init__(
        self,
        db: Database,
        tables: BusTables,
        relay: OutboxRelay | None,
        locator: Locator,
        policy: Policy,
        owner: str,
        tainter: Tainter | None = None,
    ) -> None:
        self.db = db
        self.tables = tables
        self.relay = relay
        self.events = EventWriter(SERVICE, tables, relay)
        self.locator = locator
        self.policy = policy
        self.owner = owner
        self.tainter = tainter
        self._fencing: dict[str, asyncio.Task[None]] = {}
        # Since when this replica could hear heartbeats (set by the liveness loop at start
        # and after every NATS reconnection): no node's silence is counted from before it.
        self.heard_since: datetime | None = None

    async def _lock_volume(self, s: AsyncSession, volume_id: str) -> None:
        """Serialise grants per volume. SQLite already serialises writers (BEGIN IMMEDIATE)."""
        if not self.db.is_sqlite:
            await s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:v))"), {"v": volume_id})

    # -- grants ----------------------------------------------------------------

    async def publish(self, p: Principal, req: Publish) -> Attachment:
        loc = await self.locator.locate(req.volume_id)
        if loc.tenant != p.tenant and not p.is_admin:
            raise NotFound(f"volume {req.volume_id} not found", reason="volume_not_found")
        if loc.status not in ("available", "expanding"):
            raise FailedPrecondition(f"volume {req.volume_id} is {loc.status}", reason="volume_not_ready")
        rules.check_mode(req.access_mode, req.readonly, loc.backend_kind)
        backend = self.locator.backend(loc.cluster_id, loc.backend_kind, loc.config)
        # Before the transaction and off the event loop: CephFS looks the subvolume's path up
        # at the mgr, which must not hold the node's row lock (or SQLite's writer) meanwhile.
        node_context = await asyncio.to_thread(backend.node_context, req.volume_id)
        want = rules.Grant(req.node_id, req.access_mode, req.readonly)
        async with self.db.transaction() as s:
            # Row lock (PostgreSQL; SQLite serialises writers anyway): a fence of this node
            # cannot start between this check and the grant, so every grant the node holds
            # when the fence starts is among the fence's targets.
            node = (await s.execute(select(t.nodes).where(t.nodes.c.id == req.node_id).with_for_update())).first()
            if node is None:
                raise NotFound(f"node {req.node_id} is unknown: it has never sent a heartbeat", reason="node_not_found")
            if node.state not in ("alive", "suspect"):
                raise FailedPrecondition(
                    f"node {req.node_id} is {node.state}; volumes go to live nodes only", reason="node_not_alive"
                )
            await self._lock_volume(s, req.volume_id)
            rows = (await s.execute(select(t.attachments).where(t.attachments.c.volume_id == req.volume_id))).all()
            granted = [r for r in rows if r.state == "attached"]
            same = rules.decide([rules.Grant(r.node_id, r.access_mode, r.readonly) for r in granted], want)
            if same is not None:
                return attachment_out(next(r for r in granted if r.node_id == req.node_id))
            generation = await self._next_generation(s, req.volume_id)
            context = {**node_context, "backend": loc.backend_kind, "generation": str(generation)}
            values = {
                "volume_id": req.volume_id,
                "tenant": loc.tenant,
                "node_id": req.node_id,
                "cluster_id": loc.cluster_id,
                "backend": loc.backend_kind,
                "backend_config": loc.config,
                "access_mode": req.access_mode,
                "readonly": req.readonly,
                "state": "attached",
                "generation": generation,
                "publish_context": context,
                "updated_at": now(),
            }
            stale = next((r for r in rows if r.node_id == req.node_id), None)
            if stale is not None:  # a released grant to this node, from before its fence
                await s.execute(update(t.attachments).where(t.attachments.c.id == stale.id).values(**values))
                att_id = stale.id
            else:
                att_id = f"att-{uuid.uuid4().hex}"
                await s.execute(t.attachments.insert().values(id=att_id, **values))
            row = (await s.execute(select(t.attachments).where(t.attachments.c.id == att_id))).one()
            out = attachment_out(row)
            await self.events.emit(s, loc.tenant, "attachment", "created", att_id, out.model_dump(mode="json"))
        self.events.notify()
        return out

    async def _next_generation(self, s: AsyncSession, volume_id: str) -> int:
        vg = t.volume_generations
        current = (await s.execute(select(vg.c.generation).where(vg.c.volume_id == volume_id))).scalar()
        if current is None:
            await s.execute(vg.insert().values(volume_id=volume_id, generation=1))
            return 1
        await s.execute(update(vg).where(vg.c.volume_id == volume_id).values(generation=current + 1))
        return int(current) + 1

    async def unpublish(self, p: Principal, req: Unpublish) -> None:
        async with self.db.transaction() as s:
            await self._lock_volume(s, req.volume_id)
            a = t.attachments.c
            row = (
                await s.execute(select(t.attachments).where(a.volume_id == req.volume_id, a.node_id == req.node_id))
            ).first()
            if row is None:
                return  # already unpublished: idempotent
            if row.tenant != p.tenant and not p.is_admin:
                raise NotFound(f"volume {req.volume_id} not found", reason="volume_not_found")
            await s.execute(delete(t.attachments).where(a.id == row.id))
            await self.events.emit(
                s, row.tenant, "attachment", "deleted", row.id, attachment_out(row).model_dump(mode="json")
            )
        self.events.notify()

    async def list_attachments(self, p: Principal, q: AttachmentQuery) -> AttachmentList:
        query = select(t.attachments).order_by(t.attachments.c.created_at, t.attachments.c.id)
        if not p.is_admin:
            query = query.where(t.attachments.c.tenant == p.tenant)
        if q.volume_id:
            query = query.where(t.attachments.c.volume_id == q.volume_id)
        if q.node_id:
            query = query.where(t.attachments.c.node_id == q.node_id)
        async with self.db.sessions() as s:
            rows = (await s.execute(query)).all()
        return AttachmentList(items=[attachment_out(r) for r in rows])

    # -- nodes -----------------------------------------------------------------

    async def heartbeat(self, p: Principal, hb: Heartbeat) -> HeartbeatReply:
        require_node_or_admin(p)
        staged = [v.model_dump() for v in hb.staged]
        async with self.db.transaction() as s:
            # Row lock: a heartbeat must not set a node back to alive over a fence that
            # started after it read the node.
            node = (await s.execute(select(t.nodes).where(t.nodes.c.id == hb.node_id).with_for_update())).first()
            if node is None:
                await s.execute(
                    t.nodes.insert().values(
                        id=hb.node_id,
                        state="alive",
                        state_reason="first heartbeat",
                        zone=hb.zone,
                        boot_id=hb.boot_id,
                        last_heartbeat_at=now(),
                        staged=staged,
                        fence_epoch=0,
                        tainted=False,
                    )
                )
                await self.events.emit(
                    s, SYSTEM_TENANT, "node", "registered", hb.node_id, {"node_id": hb.node_id, "zone": hb.zone}
                )
                self.events.notify()
                return HeartbeatReply(node_id=hb.node_id, state="alive", fenced=False, fence_epoch=0)
            values: dict[str, Any] = {
                "last_heartbeat_at": now(),
                "boot_id": hb.boot_id,
                "staged": staged,
                "updated_at": now(),
            }
            if hb.zone:
                values["zone"] = hb.zone
            back = node.state in ("suspect", "dead", "awaiting_approval")
            if back:
                # Talking again before any fence started: it was a blip, not a death.
                values.update(state="alive", state_reason="heartbeat resumed")
            await s.execute(update(t.nodes).where(t.nodes.c.id == hb.node_id).values(**values))
            if back and node.state != "suspect":
                await self.events.emit(
                    s, SYSTEM_TENANT, "node", "recovered", hb.node_id, {"node_id": hb.node_id, "was": node.state}
                )
            blocked: list[str] = []
            fenced = node.state in ("fencing", "fenced")
            if fenced:
                a = t.attachments.c
                blocked = list(
                    (
                        await s.execute(select(a.volume_id).where(a.node_id == hb.node_id, a.state == "released"))
                    ).scalars()
                )
            state = "alive" if back else node.state
        if back:
            self.events.notify()
        return HeartbeatReply(
            node_id=hb.node_id, state=state, fenced=fenced, fence_epoch=node.fence_epoch, blocked_volumes=blocked
        )

    async def node_status(self, p: Principal, st: NodeStatus) -> Node:
        p.require_admin()
        values: dict[str, Any] = {"updated_at": now()}
        if st.ready is not None:
            values["ready"] = st.ready
        if st.out_of_service is not None:
            values["out_of_service"] = st.out_of_service
        async with self.db.transaction() as s:
            if affected(await s.execute(update(t.nodes).where(t.nodes.c.id == st.node_id).values(**values))) != 1:
                raise NotFound(f"node {st.node_id} is unknown", reason="node_not_found")
            row = (await s.execute(select(t.nodes).where(t.nodes.c.id == st.node_id))).one()
        return node_out(row)

    async def node_down(self, p: Principal, req: NodeDown) -> Node:
        """An admin says the node is down: treated as dead now, fenced as the policy allows."""
        p.require_admin()
        row = await self._node(req.node_id)
        if row.state in ("alive", "suspect"):
            await self._on_dead(row, f"admin: {req.reason}")
        return node_out(await self._node(req.node_id))

    async def approve_fence(self, p: Principal, node_id: str) -> Node:
        """Manual mode: an admin approves fencing a dead node (also overrides the rate limit)."""
        p.require_admin()
        row = await self._node(node_id)
        if row.state in ("fencing", "fenced"):
            return node_out(row)
        await self._start_fence(row, "fence approved by an admin", enforce_limits=False)
        return node_out(await self._node(node_id))

    async def request_unfence(self, p: Principal, req: UnfenceRequest) -> Node:
        require_node_or_admin(p)
        if self.policy.unfence_mode == "manual" and not p.is_admin:
            raise FailedPrecondition(
                "unfencing needs an admin under the manual unfence policy", reason="unfence_needs_admin"
            )
        return await self._unfence(req.node_id, req.staged)

    async def admin_unfence(self, p: Principal, node_id: str) -> Node:
        p.require_admin()
        return await self._unfence(node_id, [])

    async def _unfence(self, node_id: str, staged: list[Any]) -> Node:
        row = await self._node(node_id)
        if row.state != "fenced":
            raise FailedPrecondition(f"node {node_id} is {row.state}, not fenced", reason="node_not_fenced")
        if staged:
            names = ", ".join(v.volume_id for v in staged)
            raise FailedPrecondition(
                f"node {node_id} still holds {len(staged)} volume(s) ({names}); drop them before unfencing",
                reason="stale_mounts",
            )
        if self.policy.honour_out_of_service and row.out_of_service and not row.tainted:
            # Someone else declared it out of service: unfenced now, it would be fenced again at once.
            raise FailedPrecondition(
                f"node {node_id} is declared out of service; clear that before unfencing it",
                reason="node_out_of_service",
            )
        async with self.db.sessions() as s:
            fence = (
                await s.execute(
                    select(t.fences).where(t.fences.c.node_id == node_id, t.fences.c.epoch == row.fence_epoch)
                )
            ).first()
        if fence is not None:
            for target in _targets(fence.targets, node_id):
                backend = self.locator.backend(target[0], target[1], target[2])
                await backend.unfence(target[3])
        async with self.db.transaction() as s:
            res = await s.execute(
                update(t.nodes)
                .where(t.nodes.c.id == node_id, t.nodes.c.state == "fenced")
                .values(state="alive", state_reason="unfenced", last_heartbeat_at=now(), updated_at=now())
                # Our own out-of-service taint, reported back, is about to go: it is no signal.
                .values(**({"out_of_service": None} if row.tainted else {}))
            )
            if affected(res) == 1:
                await s.execute(
                    update(t.fences)
                    .where(t.fences.c.node_id == node_id, t.fences.c.unfenced_at.is_(None))
                    .values(unfenced_at=now())
                )
                await self.events.emit(
                    s, SYSTEM_TENANT, "node", "unfenced", node_id, {"node_id": node_id, "epoch": row.fence_epoch}
                )
        self.events.notify()
        if self.tainter and row.tainted:
            await self.tainter.untaint(node_id)
            async with self.db.transaction() as s:
                await s.execute(update(t.nodes).where(t.nodes.c.id == node_id).values(tainted=False))
                await self.events.emit(s, SYSTEM_TENANT, "node", "untainted", node_id, {"node_id": node_id})
            self.events.notify()
        return node_out(await self._node(node_id))

    async def _node(self, node_id: str) -> Row[Any]:
        async with self.db.sessions() as s:
            row = (await s.execute(select(t.nodes).where(t.nodes.c.id == node_id))).first()
        if row is None:
            raise NotFound(f"node {node_id} is unknown", reason="node_not_found")
        return row

    async def get_node(self, p: Principal, node_id: str) -> Node:
        require_node_or_admin(p)
        return node_out(await self._node(node_id))

    async def list_nodes(self, p: Principal) -> NodeList:
        require_node_or_admin(p)
        async with self.db.sessions() as s:
            rows = (await s.execute(select(t.nodes).order_by(t.nodes.c.id))).all()
        return NodeList(items=[node_out(r) for r in rows])

    async def list_fences(self, p: Principal, node_id: str | None) -> FenceList:
        p.require_admin()
        q = select(t.fences).order_by(t.fences.c.created_at)
        if node_id:
            q = q.where(t.fences.c.node_id == node_id)
        async with self.db.sessions() as s:
            rows = (await s.execute(q)).all()
        return FenceList(items=[Fence.model_validate(r._mapping) for r in rows])

    # -- liveness and fencing ----------------------------------------------------

    async def monitor_once(self) -> None:
        """One pass of the liveness policy over every node (run by the lease holder only)."""
        async with self.db.sessions() as s:
            rows = (await s.execute(select(t.nodes).where(t.nodes.c.state.in_(["alive", "suspect", "dead"])))).all()
        at = now()
        for row in rows:
            if row.state == "dead":
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
                self.policy,
            )
            if verdict == "dead":
                await self._on_dead(row, why)
            elif verdict != row.state:
                async with self.db.transaction() as s:
                    await s.execute(
                        update(t.nodes)
                        .where(t.nodes.c.id == row.id, t.nodes.c.state == row.state)
                        .values(state=verdict, state_reason=why, updated_at=at)
                    )

    async def _on_dead(self, row: Row[Any], why: str) -> None:
        if self.policy.fence_mode == "manual":
            await self._set_state(
                row, "awaiting_approval", f"{why}; waiting for an admin to approve the fence", "awaiting_fence_approval"
            )
            return
        await self._start_fence(row, why, enforce_limits=True)

    async def _set_state(self, row: Row[Any], state: str, why: str, verb: str) -> None:
        async with self.db.transaction() as s:
            res = await s.execute(
                update(t.nodes)
                .where(t.nodes.c.id == row.id, t.nodes.c.state == row.state)
                .values(state=state, state_reason=why, updated_at=now())
            )
            if affected(res) == 1 and row.state != state:
                await self.events.emit(s, SYSTEM_TENANT, "node", verb, row.id, {"node_id": row.id, "reason": why})
        self.events.notify()

    async def _start_fence(self, row: Row[Any], why: str, *, enforce_limits: bool) -> None:
        if enforce_limits:
            async with self.db.sessions() as s:
                fenced_now = (
                    await s.execute(
                        select(func.count()).select_from(t.nodes).where(t.nodes.c.state.in_(["fencing", "fenced"]))
                    )
                ).scalar_one()
                recent = list(
                    (
                        await s.execute(
                            select(t.fences.c.created_at).where(
                                t.fences.c.created_at >= now() - timedelta(seconds=self.policy.fence_window_s)
                            )
                        )
                    ).scalars()
                )
            blocked = may_fence(now(), fenced_now, recent, self.policy)
            if blocked:
                await self._set_state(row, "dead", f"{why}{DEFERRED}{blocked}", "fence_deferred")
                return
        fence_id = f"fence-{uuid.uuid4().hex}"
        async with self.db.transaction() as s:
            # Lock the node first, then read its grants: no publish to it can commit in between.
            node = (await s.execute(select(t.nodes).where(t.nodes.c.id == row.id).with_for_update())).one()
            a = t.attachments.c
            atts = (await s.execute(select(t.attachments).where(a.node_id == row.id, a.state == "attached"))).all()
            epoch = node.fence_epoch + 1
            res = await s.execute(
                update(t.nodes)
                .where(
                    t.nodes.c.id == row.id, t.nodes.c.state == node.state, t.nodes.c.state.not_in(["fencing", "fenced"])
                )
                .values(state="fencing", state_reason=why, fence_epoch=epoch, updated_at=now())
            )
            if affected(res) != 1:
                return  # someone else moved it on
            await s.execute(
                t.fences.insert().values(
                    id=fence_id,
                    node_id=row.id,
                    epoch=epoch,
                    state="pending",
                    reason=why,
                    results={},
                    targets=_fence_targets(row.id, atts, node.staged or []),
                    owner=self.owner,
                    lease_until=now() + FENCE_LEASE,
                )
            )
            await self.events.emit(
                s, SYSTEM_TENANT, "node", "fencing", row.id, {"node_id": row.id, "epoch": epoch, "reason": why}
            )
        self.events.notify()
        self.launch_fence(fence_id)

    def launch_fence(self, fence_id: str) -> asyncio.Task[None]:
        task = self._fencing.get(fence_id)
        if task is None or task.done():
            task = asyncio.create_task(self._run_fence(fence_id), name=f"fence-{fence_id}")
            self._fencing[fence_id] = task
            task.add_done_callback(lambda _t: self._fencing.pop(fence_id, None))
        return task

    async def _run_fence(self, fence_id: str) -> None:
        delay = 0.2
        while True:
            async with self.db.transaction() as s:
                claimed = await s.execute(
                    update(t.fences)
                    .where(
                        t.fences.c.id == fence_id,
                        t.fences.c.state == "pending",
                        or_(t.fences.c.owner == self.owner, t.fences.c.lease_until < now()),
                    )
                    .values(owner=self.owner, lease_until=now() + FENCE_LEASE)
                )
                if affected(claimed) != 1:
                    return
                fence = (await s.execute(select(t.fences).where(t.fences.c.id == fence_id))).one()
            try:
                results: dict[str, list[str]] = {}
                for cluster_id, kind, config, target in _targets(fence.targets, fence.node_id):
                    backend = self.locator.backend(cluster_id, kind, config)
                    results[cluster_id] = await backend.fence(target)
                await self._finish_fence(fence, results)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Never release without a completed fence: keep trying, loudly.
                log.error("fence %s of node %s failed, retrying: %s", fence_id, fence.node_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _finish_fence(self, fence: Row[Any], results: dict[str, list[str]]) -> None:
        node_id = fence.node_id
        async with self.db.transaction() as s:
            res = await s.execute(
                update(t.fences)
                .where(t.fences.c.id == fence.id, t.fences.c.state == "pending")
                .values(state="done", results=results, completed_at=now(), lease_until=None)
            )
            if affected(res) != 1:
                return
            await s.execute(
                update(t.nodes)
                .where(t.nodes.c.id == node_id)
                .values(state="fenced", fenced_at=now(), state_reason=f"fenced (epoch {fence.epoch})", updated_at=now())
            )
            a = t.attachments.c
            atts = (await s.execute(select(t.attachments).where(a.node_id == node_id, a.state == "attached"))).all()
            await s.execute(
                update(t.attachments)
                .where(a.node_id == node_id, a.state == "attached")
                .values(state="released", updated_at=now())
            )
            for att in atts:
                data = attachment_out(att).model_dump(mode="json") | {"state": "released", "fence_epoch": fence.epoch}
                await self.events.emit(s, att.tenant, "attachment", "released", att.id, data)
            await self.events.emit(
                s,
                SYSTEM_TENANT,
                "node",
                "fenced",
                node_id,
                {"node_id": node_id, "epoch": fence.epoch, "results": results, "released": [a.volume_id for a in atts]},
            )
        self.events.notify()
        if self.tainter:
            # Only after a completed fence: the taint makes Kubernetes detach and reschedule.
            try:
                await self.tainter.taint(node_id)
            except Exception as exc:
                log.error("could not taint node %s: %s", node_id, exc)
                return
            async with self.db.transaction() as s:
                await s.execute(update(t.nodes).where(t.nodes.c.id == node_id).values(tainted=True))
                await self.events.emit(
                    s, SYSTEM_TENANT, "node", "tainted", node_id, {"node_id": node_id, "epoch": fence.epoch}
                )
            self.events.notify()

    async def resume_fences(self) -> int:
        async with self.db.sessions() as s:
            ids = list(
                (
                    await s.execute(
                        select(t.fences.c.id).where(
                            t.fences.c.state == "pending",
                            or_(t.fences.c.owner == self.owner, t.fences.c.lease_until < now()),
                        )
                    )
                ).scalars()
            )
        for fid in ids:
            self.launch_fence(fid)
        return len(ids)

    async def stop(self) -> None:
        tasks = list(self._fencing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _fence_targets(node_id: str, atts: Sequence[Row[Any]], staged: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cluster: backend kind, config, the node's volumes there and its client addresses."""
    addresses: dict[str, str] = {v["volume_id"]: v["client_address"] for v in staged if v.get("client_address")}
    targets: dict[str, Any] = {}
    for att in atts:
        entry = targets.setdefault(
            att.cluster_id, {"backend": att.backend, "config": att.backend_config, "volumes": [], "addresses": []}
        )
        entry["volumes"].append(att.volume_id)
        addr = addresses.get(att.volume_id)
        if addr and addr not in entry["addresses"]:
            entry["addresses"].append(addr)
    return targets


def _targets(raw: dict[str, Any], node_id: str) -> list[tuple[str, str, dict[str, Any], FenceTarget]]:
    out = []
    for cluster_id, entry in sorted(raw.items()):
        target = FenceTarget(
            node_id=node_id, volume_ids=tuple(entry["volumes"]), client_addresses=tuple(entry["addresses"])
        )
        out.append((cluster_id, entry["backend"], entry["config"], target))
    return out

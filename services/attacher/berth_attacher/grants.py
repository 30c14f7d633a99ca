"""Grants: publish (attach a volume to a node) and unpublish, under the single-writer rules.

Safety argument in one line: an attachment leaves a node only in the same transaction that
records a completed storage-side fence of that node (fencing.py), so a node that is merely
partitioned can never share a single-writer volume with its successor.
"""

from __future__ import annotations

import contextlib

from berth_attacher import repo, rules
from berth_attacher.context import Context
from berth_attacher.lifecycle import (
    ATTACHMENT,
    GRANTABLE_NODE_STATES,
    PUBLISHABLE_VOLUME_STATUSES,
    AttachmentState,
)
from berth_attacher.locator import Located
from berth_shared.auth import Principal
from berth_shared.backends import Attaches, publish_context, withdraw
from berth_shared.clock import now
from berth_shared.errors import BerthError, FailedPrecondition, NotFound
from berth_shared.ids import new_id
from berth_shared.messages.attacher import Attachment, AttachmentList, AttachmentQuery, Publish, Unpublish
from berth_shared.messages.common import InventoryPage


def _volume_not_found(volume_id: str) -> NotFound:
    return NotFound(f"volume {volume_id} not found", reason="volume_not_found")


class Grants:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def publish(self, p: Principal, req: Publish) -> Attachment:
        p.require_writer()
        loc = await self.ctx.locator.locate(req.volume_id)
        if loc.tenant != p.tenant and not p.is_admin:
            raise _volume_not_found(req.volume_id)
        if loc.status not in PUBLISHABLE_VOLUME_STATUSES:
            raise FailedPrecondition(f"volume {req.volume_id} is {loc.status}", reason="volume_not_ready")
        rules.check_mode(req.access_mode, req.readonly, loc.backend_kind)
        backend = self.ctx.locator.backend(loc.cluster_id, loc.backend_kind, loc.config)
        # The single-writer refusal first, from a plain read (the transaction below decides
        # for good): a refused node should not get a Cinder attachment even for a moment.
        async with self.ctx.db.sessions() as s:
            rows = await repo.attachments.of_volume(s, req.volume_id)
        held = [rules.Grant(r.node_id, r.access_mode, r.readonly) for r in rows if r.state == AttachmentState.ATTACHED]
        rules.decide(held, rules.Grant(req.node_id, req.access_mode, req.readonly))
        # Before the transaction: CephFS looks the subvolume's path up at the mgr, Cinder
        # makes the node's attachment, Manila its access rule; none of that may hold the
        # node's row lock (or SQLite's writer) meanwhile.
        node_context = await publish_context(backend, req.volume_id, req.node_id, readonly=req.readonly)
        try:
            return await self._grant(req, loc, node_context)
        except BerthError:
            # Refused (node not alive, published elsewhere): take back what the backend gave,
            # unless the node holds the grant already (a repeated publish).
            if isinstance(backend, Attaches) and not await self._holds(req.volume_id, req.node_id):
                with contextlib.suppress(Exception):
                    await withdraw(backend, req.volume_id, req.node_id)
            raise

    async def _holds(self, volume_id: str, node_id: str) -> bool:
        async with self.ctx.db.sessions() as s:
            row = await repo.attachments.of_volume_on(s, volume_id, node_id)
        return row is not None and row.state == AttachmentState.ATTACHED

    async def _grant(self, req: Publish, loc: Located, node_context: dict[str, str]) -> Attachment:
        want = rules.Grant(req.node_id, req.access_mode, req.readonly)
        async with self.ctx.db.transaction() as s:
            # Row lock (PostgreSQL; SQLite serialises writers anyway): a fence of this node
            # cannot start between this check and the grant, so every grant the node holds
            # when the fence starts is among the fence's targets.
            node = await repo.nodes.get(s, req.node_id, lock=True)
            if node is None:
                raise NotFound(f"node {req.node_id} is unknown: it has never sent a heartbeat", reason="node_not_found")
            if node.state not in GRANTABLE_NODE_STATES:
                raise FailedPrecondition(
                    f"node {req.node_id} is {node.state}; volumes go to live nodes only", reason="node_not_alive"
                )
            await repo.attachments.lock_volume(s, req.volume_id)
            rows = await repo.attachments.of_volume(s, req.volume_id)
            granted = [r for r in rows if r.state == AttachmentState.ATTACHED]
            same = rules.decide([rules.Grant(r.node_id, r.access_mode, r.readonly) for r in granted], want)
            if same is not None:
                return repo.attachments.out(next(r for r in granted if r.node_id == req.node_id))
            # Under the node's lock: two publishes to one node cannot both take its last slot.
            held = await repo.attachments.count_on_node(s, req.node_id, AttachmentState.ATTACHED)
            rules.check_room(req.node_id, held, node.max_volumes)
            generation = await repo.attachments.next_generation(s, req.volume_id)
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
                "generation": generation,
                "publish_context": context,
                "updated_at": now(),
            }
            stale = next((r for r in rows if r.node_id == req.node_id), None)
            if stale is not None:  # a released grant to this node, from before its fence
                state = ATTACHMENT.target(stale.state, "republished")
                await repo.attachments.replace(s, stale.id, state=state, **values)
                att_id = stale.id
            else:
                att_id = new_id("att")
                await repo.attachments.insert(s, id=att_id, state=AttachmentState.ATTACHED, **values)
            out = repo.attachments.out(await repo.attachments.get(s, att_id))
            await self.ctx.events.emit(s, loc.tenant, "attachment", "created", att_id, out.model_dump(mode="json"))
        self.ctx.events.notify()
        return out

    async def unpublish(self, p: Principal, req: Unpublish) -> None:
        p.require_writer()  # before the idempotent early return: a reader is refused, always
        async with self.ctx.db.sessions() as s:
            row = await repo.attachments.of_volume_on(s, req.volume_id, req.node_id)
        if row is None:
            return  # already unpublished: idempotent
        if row.tenant != p.tenant and not p.is_admin:
            raise _volume_not_found(req.volume_id)
        # The backend first (idempotent): a crash after it leaves the row, and the CO's retry
        # of the unpublish comes back here.
        await withdraw(
            self.ctx.locator.backend(row.cluster_id, row.backend, row.backend_config), req.volume_id, req.node_id
        )
        async with self.ctx.db.transaction() as s:
            await repo.attachments.lock_volume(s, req.volume_id)
            row = await repo.attachments.of_volume_on(s, req.volume_id, req.node_id)
            if row is None:
                return  # already unpublished: idempotent
            if row.tenant != p.tenant and not p.is_admin:
                raise _volume_not_found(req.volume_id)
            await repo.attachments.remove(s, row.id)
            data = repo.attachments.out(row).model_dump(mode="json")
            await self.ctx.events.emit(s, row.tenant, "attachment", "deleted", row.id, data)
        self.ctx.events.notify()

    async def list(self, p: Principal, q: AttachmentQuery) -> AttachmentList:
        async with self.ctx.db.sessions() as s:
            rows = await repo.attachments.query(s, None if p.is_admin else p.tenant, q.volume_id, q.node_id)
        return AttachmentList(items=[repo.attachments.out(r) for r in rows])

    async def inventory(self, p: Principal, q: InventoryPage) -> AttachmentList:
        """Every tenant's grants by id, a page at a time (admin: the watcher's source)."""
        p.require_admin()
        async with self.ctx.db.sessions() as s:
            rows = await repo.attachments.page(s, q.limit, q.starting_token)
        items = [repo.attachments.out(r) for r in rows[: q.limit]]
        return AttachmentList(items=items, next_token=items[-1].id if len(rows) > q.limit else None)

"""Bus commands `berth.attacher.<noun>.<verb>`: the same use cases as the HTTP API."""

from __future__ import annotations

from berth_attacher.service import Attacher
from berth_shared.bus import CommandContext, CommandServer
from berth_shared.messages.attacher import (
    PREFIX,
    Attachment,
    AttachmentList,
    AttachmentQuery,
    Empty,
    FenceList,
    Heartbeat,
    HeartbeatReply,
    Node,
    NodeDown,
    NodeList,
    NodeRef,
    NodeStatus,
    Publish,
    UnfenceRequest,
    Unpublish,
)
from berth_shared.messages.common import InventoryPage
from berth_shared.messages.provisioner import NoArgs


def register_commands(server: CommandServer, svc: Attacher) -> None:
    @server.command(f"{PREFIX}.volume.publish", Publish)
    async def publish(req: Publish, ctx: CommandContext) -> Attachment:
        return await svc.grants.publish(ctx.principal, req)

    @server.command(f"{PREFIX}.volume.unpublish", Unpublish)
    async def unpublish(req: Unpublish, ctx: CommandContext) -> Empty:
        await svc.grants.unpublish(ctx.principal, req)
        return Empty()

    @server.command(f"{PREFIX}.attachment.list", AttachmentQuery)
    async def attachment_list(req: AttachmentQuery, ctx: CommandContext) -> AttachmentList:
        return await svc.grants.list(ctx.principal, req)

    @server.command(f"{PREFIX}.inventory.attachments", InventoryPage)
    async def inventory_attachments(req: InventoryPage, ctx: CommandContext) -> AttachmentList:
        return await svc.grants.inventory(ctx.principal, req)

    @server.command(f"{PREFIX}.node.heartbeat", Heartbeat)
    async def heartbeat(req: Heartbeat, ctx: CommandContext) -> HeartbeatReply:
        return await svc.nodes.heartbeat(ctx.principal, req)

    @server.command(f"{PREFIX}.node.status", NodeStatus)
    async def node_status(req: NodeStatus, ctx: CommandContext) -> Node:
        return await svc.nodes.status(ctx.principal, req)

    @server.command(f"{PREFIX}.node.down", NodeDown)
    async def node_down(req: NodeDown, ctx: CommandContext) -> Node:
        return await svc.fencing.node_down(ctx.principal, req)

    @server.command(f"{PREFIX}.node.fence", NodeRef)
    async def node_fence(req: NodeRef, ctx: CommandContext) -> Node:
        return await svc.fencing.approve(ctx.principal, req.node_id)

    @server.command(f"{PREFIX}.node.unfence", UnfenceRequest)
    async def node_unfence(req: UnfenceRequest, ctx: CommandContext) -> Node:
        return await svc.unfencing.request(ctx.principal, req)

    @server.command(f"{PREFIX}.node.force_unfence", NodeRef)
    async def node_force_unfence(req: NodeRef, ctx: CommandContext) -> Node:
        return await svc.unfencing.by_admin(ctx.principal, req.node_id)

    @server.command(f"{PREFIX}.node.get", NodeRef)
    async def node_get(req: NodeRef, ctx: CommandContext) -> Node:
        return await svc.nodes.get(ctx.principal, req.node_id)

    @server.command(f"{PREFIX}.node.list", NoArgs)
    async def node_list(req: NoArgs, ctx: CommandContext) -> NodeList:
        return await svc.nodes.list(ctx.principal)

    @server.command(f"{PREFIX}.fence.list", NodeRef)
    async def fence_list(req: NodeRef, ctx: CommandContext) -> FenceList:
        return await svc.fencing.list_fences(ctx.principal, req.node_id)

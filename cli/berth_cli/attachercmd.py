"""`berth attachments|nodes|fences ...`: the attacher's view for operators (docs/fencing.md):
which node holds which volume, which nodes are alive, fencing a node and unfencing it.
The admin token by default (a tenant's token lists its own attachments only)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from berth_cli.client import Api, AsJson, AttacherUrl, Token, api, seg
from berth_cli.output import Column, fail, note, wait_for
from berth_cli.resources import VOLUME_ID

attachments = typer.Typer(help="Who may use which volume where (single writer).", no_args_is_help=True)
nodes = typer.Typer(help="Nodes: liveness, fencing, unfencing (admin).", no_args_is_help=True)
fences = typer.Typer(help="The record of fences (admin).", no_args_is_help=True)

ATTACHMENT_COLS = [
    Column("VOLUME", "volume_id", id=True),
    Column("NODE", "node_id"),
    Column("MODE", "access_mode", drop=3),
    Column("RO", "readonly", drop=2),
    Column("STATE", "state"),
    Column("TENANT", "tenant"),
    Column("SINCE", "created_at", drop=1),
    Column("ID", "id", id=True, drop=4),
]
NODE_COLS = [
    Column("NODE", "id"),
    Column("STATE", "state"),
    Column("READY", "ready", drop=3),
    Column("OUT-OF-SERVICE", "out_of_service", drop=2),
    Column("EPOCH", "fence_epoch"),
    Column("LAST HEARTBEAT", "last_heartbeat_at"),
    Column("ZONE", "zone", drop=4),
    Column("WHY", "state_reason", drop=1),
]
FENCE_COLS = [
    Column("NODE", "node_id"),
    Column("EPOCH", "epoch"),
    Column("STATE", "state"),
    Column("REASON", "reason"),
    Column("STARTED", "created_at", drop=2),
    Column("DONE", "completed_at", drop=1),
    Column("ID", "id", id=True, drop=3),
]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it is done (with progress).")]
Timeout = Annotated[float, typer.Option("--timeout", help="How long to wait, in seconds.")]


@attachments.command("list")
def attachment_list(
    volume: Annotated[str | None, typer.Option("--volume", help="Only this volume's (name or id).")] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node's.")] = None,
    url: AttacherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List attachments: every tenant's with the admin token, the tenant's own otherwise."""
    a = api("attacher", url, token, as_json, admin=True)
    volume_id = None
    if volume:  # a name is one of the token's tenant's volumes, known to the provisioner
        prov = api("provisioner", None, a.token, as_json)
        volume_id = prov.resolve("/v1/volumes", volume, kind="volume", id_pattern=VOLUME_ID)
    a.show_list(a.call("GET", "/v1/attachments", params={"volume_id": volume_id, "node_id": node}), ATTACHMENT_COLS)


@nodes.command("list")
def node_list(url: AttacherUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Every node the attacher knows, with its liveness and fence state."""
    a = api("attacher", url, token, as_json, admin=True)
    a.show_list(a.call("GET", "/v1/nodes"), NODE_COLS)


@nodes.command("get")
def node_get(node: str, url: AttacherUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """One node."""
    a = api("attacher", url, token, as_json, admin=True)
    a.show(a.call("GET", f"/v1/nodes/{seg(node)}"))


def _node(a: Api, node: str) -> dict[str, Any]:
    found: dict[str, Any] = a.call("GET", f"/v1/nodes/{seg(node)}")
    return found


@nodes.command("fence")
def node_fence(
    node: str,
    reason: Annotated[str, typer.Option(help="Why (recorded with the fence).")] = "fenced by an operator",
    wait: Wait = True,
    timeout: Timeout = 300.0,
    url: AttacherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Fence a node: cut it off at the storage, then move its volumes. A live node is declared
    down first; a fence waiting for approval (manual mode, rate limit) is approved."""
    a = api("attacher", url, token, as_json, admin=True)
    state = _node(a, node)["state"]
    if state in ("alive", "suspect"):
        state = a.call("POST", f"/v1/nodes/{seg(node)}/down", body={"reason": reason})["state"]
    if state in ("dead", "awaiting_approval"):
        state = a.call("POST", f"/v1/nodes/{seg(node)}/fence")["state"]
    done = _node(a, node)
    if wait and done["state"] != "fenced":
        done = wait_for(
            lambda: _node(a, node),
            lambda n: n["state"] == "fenced",
            what=f"fencing {node}",
            describe=lambda n: f"{n['state']} ({n.get('state_reason') or '-'})",
            timeout=timeout,
        )
    a.show(done)
    if not as_json and done["state"] != "fenced":
        note(f"{node} is {done['state']}; follow it with: berth nodes get {node}")


@nodes.command("unfence")
def node_unfence(
    node: str,
    wait: Wait = True,
    timeout: Timeout = 120.0,
    url: AttacherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Unfence a node as an admin, vouching that it holds nothing any more (its agent does
    this by itself when it has dropped every mount)."""
    a = api("attacher", url, token, as_json, admin=True)
    if _node(a, node)["state"] != "fenced":
        fail(f"{node} is not fenced (berth nodes get {node})", 2)
    done: dict[str, Any] = a.call("POST", f"/v1/nodes/{seg(node)}/force-unfence")
    if wait and done["state"] == "fenced":
        done = wait_for(
            lambda: _node(a, node),
            lambda n: n["state"] != "fenced",
            what=f"unfencing {node}",
            describe=lambda n: str(n["state"]),
            timeout=timeout,
        )
    a.show(done)


@fences.command("list")
def fence_list(
    node: Annotated[str | None, typer.Option("--node", help="Only this node's.")] = None,
    url: AttacherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Every fence: which node, which epoch, why, and whether it completed."""
    a = api("attacher", url, token, as_json, admin=True)
    a.show_list(a.call("GET", "/v1/fences", params={"node_id": node}), FENCE_COLS)


def register(app: typer.Typer) -> None:
    app.add_typer(attachments, name="attachments")
    app.add_typer(nodes, name="nodes")
    app.add_typer(fences, name="fences")

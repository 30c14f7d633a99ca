"""`berth volumes|snapshots|clusters|types|quotas ...`: the provisioner's HTTP API for people and
scripts (options, tokens and exit codes: `berth_cli.client`)."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from berth_cli.client import AllPages, Api, AsJson, Limit, StartingToken, Token, api, seg
from berth_cli.client import ProvisionerUrl as Url
from berth_cli.output import Column, gib, note, wait_for

VOLUME_ID = re.compile(r"vol-[0-9a-f]{32}")
SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{32}")
CLUSTER_ID = re.compile(r"cl-[0-9a-f]{32}")


class ClusterState(StrEnum):
    active = "active"
    draining = "draining"
    readonly = "readonly"


VOLUME_COLS = [
    Column("ID", "id", id=True),
    Column("NAME", "name"),
    Column("GiB", "size_gib"),
    Column("TYPE", "volume_type"),
    Column("STATUS", "status"),
    Column("TENANT", "tenant", drop=4),
    Column("ZONE", "zone", drop=3),
    Column("CLUSTER", "cluster_id", id=True, drop=2),
    Column("CREATED", "created_at", drop=1),
]
SNAPSHOT_COLS = [
    Column("ID", "id", id=True),
    Column("NAME", "name"),
    Column("VOLUME", "volume_id", id=True, drop=3),
    Column("GiB", "size_gib"),
    Column("STATUS", "status"),
    Column("CREATED", "created_at", drop=1),
]


def _fill(row: dict[str, Any]) -> str:
    limit = row["capacity_gib"] * row["overcommit_ratio"]
    return f"{100 * row['provisioned_gib'] / limit:.0f}%" if limit else "-"


CLUSTER_COLS = [
    Column("ID", "id", id=True),
    Column("NAME", "name"),
    Column("STATE", "state"),
    Column("BACKEND", "backend", drop=3),
    Column("ZONE", "zone", drop=4),
    Column("TYPES", "volume_types"),
    Column("FILL", _fill),
    Column("PROV/CAP GiB", lambda r: f"{r['provisioned_gib']}/{r['capacity_gib']}", drop=6),
    Column("x", "overcommit_ratio", drop=2),
    Column("VOLS", "volume_count"),
    Column("FREE GiB", lambda row: gib(row.get("backend_free_bytes")), drop=5),
    Column("CREATED", "created_at", drop=1),
]
TYPE_COLS = [Column("NAME", "name"), Column("DESCRIPTION", "description")]

# -- commands ------------------------------------------------------------------------------

volumes = typer.Typer(help="Volumes of a tenant (token: demo by default).", no_args_is_help=True)
snapshots = typer.Typer(help="Snapshots of volumes (token: demo by default).", no_args_is_help=True)
clusters = typer.Typer(help="Storage clusters (admin).", no_args_is_help=True)
vtypes = typer.Typer(help="Volume types (create: admin).", no_args_is_help=True)
quotas = typer.Typer(help="Per-tenant quotas (set: admin).", no_args_is_help=True)


def _volume(a: Api, ref: str) -> str:
    return a.resolve("/v1/volumes", ref, kind="volume", id_pattern=VOLUME_ID)


def _snapshot(a: Api, ref: str) -> str:
    return a.resolve("/v1/snapshots", ref, kind="snapshot", id_pattern=SNAPSHOT_ID)


def _settle(a: Api, path: str, body: dict[str, Any], busy: str, wait: bool) -> dict[str, Any]:
    """A resource still in its transitional status: wait (with progress) or say how to watch it."""
    if body.get("status") != busy:
        return body
    if not wait:
        note(f"still {busy}; watch it with: berth {path.split('/')[2]} get {body['id']}")
        return body
    settled: dict[str, Any] = wait_for(
        lambda: a.call("GET", f"{path}/{seg(body['id'])}"),
        lambda b: b.get("status") != busy,
        what=f"{busy} {body['id']}",
        describe=lambda b: str(b.get("status")),
    )
    return settled


Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the operation has finished.")]


@volumes.command("create")
def volume_create(
    name: str,
    size: Annotated[int, typer.Option("--size", help="Size in GiB.")],
    volume_type: Annotated[str, typer.Option("--type", help="Volume type (`berth types list`).")],
    zone: Annotated[str | None, typer.Option(help="Availability zone.")] = None,
    from_snapshot: Annotated[str | None, typer.Option("--from-snapshot", help="Snapshot (name or id) to copy.")] = None,
    from_volume: Annotated[str | None, typer.Option("--from-volume", help="Volume (name or id) to clone.")] = None,
    wait: Wait = True,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create a volume (the name is the idempotency key: the same request again returns it)."""
    a = api("provisioner", url, token, as_json)
    body = {
        "name": name,
        "size_gib": size,
        "volume_type": volume_type,
        "zone": zone,
        "source_snapshot_id": _snapshot(a, from_snapshot) if from_snapshot else None,
        "source_volume_id": _volume(a, from_volume) if from_volume else None,
    }
    vol = a.call("POST", "/v1/volumes", body={k: v for k, v in body.items() if v is not None})
    a.show(_settle(a, "/v1/volumes", vol, "creating", wait))


@volumes.command("list")
def volume_list(
    limit: Limit = 100,
    starting_token: StartingToken = None,
    all_pages: AllPages = False,
    tenant: Annotated[str | None, typer.Option(help="Another tenant's volumes (admin only).")] = None,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List the tenant's volumes (an admin: any tenant's, with --tenant)."""
    a = api("provisioner", url, token, as_json, admin=tenant is not None)
    params = {"limit": limit, "starting_token": starting_token, "tenant": tenant}
    a.show_list(a.pages("/v1/volumes", params, all_pages), VOLUME_COLS)


@volumes.command("get")
def volume_get(volume: str, url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show one volume (by name or id)."""
    a = api("provisioner", url, token, as_json)
    a.show(a.call("GET", f"/v1/volumes/{seg(_volume(a, volume))}"))


@volumes.command("expand")
def volume_expand(
    volume: str,
    size: Annotated[int, typer.Option("--size", help="New size in GiB (larger than now).")],
    wait: Wait = True,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Grow a volume (by name or id)."""
    a = api("provisioner", url, token, as_json)
    vol = a.call("POST", f"/v1/volumes/{seg(_volume(a, volume))}/expand", body={"size_gib": size})
    a.show(_settle(a, "/v1/volumes", vol, "expanding", wait))


@volumes.command("retype")
def volume_retype(
    volume: str,
    volume_type: Annotated[str, typer.Option("--type", help="The volume type to move to (its cluster must serve it).")],
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Move a volume (by name or id) to another volume type in place; the data stays, the
    watcher applies the type's IO limits."""
    a = api("provisioner", url, token, as_json)
    a.show(a.call("POST", f"/v1/volumes/{seg(_volume(a, volume))}/retype", body={"volume_type": volume_type}))


@volumes.command("delete")
def volume_delete(volume: str, url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """Delete a volume (by name or id) and its data."""
    a = api("provisioner", url, token, as_json)
    volume_id = _volume(a, volume)
    a.call("DELETE", f"/v1/volumes/{seg(volume_id)}")
    a.show({"id": volume_id, "deleted": True}, lambda _: typer.echo(f"deleted volume {volume_id}"))


@snapshots.command("create")
def snapshot_create(
    name: str,
    volume: Annotated[str, typer.Option("--volume", help="The volume (name or id) to snapshot.")],
    wait: Wait = True,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Snapshot a volume."""
    a = api("provisioner", url, token, as_json)
    snap = a.call("POST", "/v1/snapshots", body={"name": name, "volume_id": _volume(a, volume)})
    a.show(_settle(a, "/v1/snapshots", snap, "creating", wait))


@snapshots.command("list")
def snapshot_list(
    volume: Annotated[str | None, typer.Option("--volume", help="Only this volume's (name or id) snapshots.")] = None,
    limit: Limit = 100,
    starting_token: StartingToken = None,
    all_pages: AllPages = False,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List the tenant's snapshots."""
    a = api("provisioner", url, token, as_json)
    params = {"volume_id": _volume(a, volume) if volume else None, "limit": limit, "starting_token": starting_token}
    a.show_list(a.pages("/v1/snapshots", params, all_pages), SNAPSHOT_COLS)


@snapshots.command("get")
def snapshot_get(snapshot: str, url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show one snapshot (by name or id)."""
    a = api("provisioner", url, token, as_json)
    a.show(a.call("GET", f"/v1/snapshots/{seg(_snapshot(a, snapshot))}"))


@snapshots.command("delete")
def snapshot_delete(snapshot: str, url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """Delete a snapshot (by name or id)."""
    a = api("provisioner", url, token, as_json)
    snapshot_id = _snapshot(a, snapshot)
    a.call("DELETE", f"/v1/snapshots/{seg(snapshot_id)}")
    a.show({"id": snapshot_id, "deleted": True}, lambda _: typer.echo(f"deleted snapshot {snapshot_id}"))


@clusters.command("register")
def cluster_register(
    name: str,
    root: Annotated[Path, typer.Option("--root", help="File backend directory on the provisioner's host.")],
    volume_types: Annotated[str, typer.Option("--types", help="Volume types served, comma-separated.")],
    capacity: Annotated[int, typer.Option("--capacity", help="Capacity in GiB.")],
    zone: Annotated[str, typer.Option(help="Availability zone.")] = "default",
    overcommit: Annotated[float, typer.Option(help="Overcommit ratio (thin provisioning), 1-100.")] = 1.0,
    state: Annotated[ClusterState, typer.Option(help="Initial state.")] = ClusterState.active,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Register a file-backed storage cluster; an active one takes new volumes at once."""
    a = api("provisioner", url, token, as_json, admin=True)
    body = {
        "name": name,
        "backend": "file",
        "config": {"root": str(root.expanduser().absolute())},
        "volume_types": [t.strip() for t in volume_types.split(",") if t.strip()],
        "zone": zone,
        "capacity_gib": capacity,
        "overcommit_ratio": overcommit,
        "state": state.value,
    }
    a.show(a.call("POST", "/v1/clusters", body=body))


@clusters.command("list")
def cluster_list(url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """List storage clusters with capacity and provisioned figures."""
    a = api("provisioner", url, token, as_json, admin=True)
    a.show_list(a.call("GET", "/v1/clusters"), CLUSTER_COLS)


@clusters.command("set-state")
def cluster_set_state(
    cluster: str,
    state: ClusterState,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Set a cluster's (name or id) state: active takes new volumes, draining and readonly take none."""
    a = api("provisioner", url, token, as_json, admin=True)
    cluster_id = a.resolve("/v1/clusters", cluster, kind="cluster", id_pattern=CLUSTER_ID)
    a.show(a.call("PATCH", f"/v1/clusters/{seg(cluster_id)}", body={"state": state.value}))


@vtypes.command("create")
def type_create(
    name: str,
    description: Annotated[str, typer.Option(help="What the type offers.")] = "",
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create a volume type (clusters then serve it by name)."""
    a = api("provisioner", url, token, as_json, admin=True)
    a.show(a.call("POST", "/v1/volume-types", body={"name": name, "description": description}))


@vtypes.command("list")
def type_list(url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """List volume types."""
    a = api("provisioner", url, token, as_json, admin=True)
    a.show_list(a.call("GET", "/v1/volume-types"), TYPE_COLS)


@quotas.command("get")
def quota_get(tenant: str, url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show a tenant's quota and usage."""
    a = api("provisioner", url, token, as_json, admin=True)
    a.show(a.call("GET", f"/v1/quotas/{seg(tenant)}"))


@quotas.command("set")
def quota_set(
    tenant: str,
    volume_count: Annotated[int, typer.Option("--volumes", help="Most volumes the tenant may have.")],
    gigabytes: Annotated[int, typer.Option("--gigabytes", help="Most GiB the tenant may provision.")],
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Set a tenant's quota."""
    a = api("provisioner", url, token, as_json, admin=True)
    a.show(a.call("PUT", f"/v1/quotas/{seg(tenant)}", body={"volumes": volume_count, "gigabytes": gigabytes}))


def register(app: typer.Typer) -> None:
    app.add_typer(volumes, name="volumes")
    app.add_typer(snapshots, name="snapshots")
    app.add_typer(clusters, name="clusters")
    app.add_typer(vtypes, name="types")
    app.add_typer(quotas, name="quotas")

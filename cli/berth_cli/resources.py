"""`berth volumes|snapshots|clusters|types|quotas ...`: the provisioner's HTTP API for people and scripts.

Every command takes `--url` (BERTH_URL), `--token` (BERTH_TOKEN) and `--json`. Without a token
the embedded stack's token file (`$BERTH_DATA_DIR/tokens.json`, default `.berth/`) is used: its
`admin` token for clusters, types and quotas, its `demo` token for volumes and snapshots.
Exit codes: 0 done, 2 the request was refused (4xx, or no token), 1 the provisioner could not be
reached or failed (5xx).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Table

from berth_shared.auth import read_tokens

DEFAULT_URL = "http://127.0.0.1:8701"
TIMEOUT = httpx.Timeout(60.0, connect=5.0)

Url = Annotated[str, typer.Option("--url", envvar="BERTH_URL", help="The provisioner's base URL.")]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="BERTH_TOKEN",
        show_default=False,
        help="Bearer token (default: the embedded stack's, from $BERTH_DATA_DIR/tokens.json, .berth/ if unset).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Limit = Annotated[int, typer.Option("--limit", help="Page size (1-1000).")]
StartingToken = Annotated[str | None, typer.Option("--starting-token", help="Continue after this page token.")]
AllPages = Annotated[bool, typer.Option("--all-pages", help="Follow next_token until the last page.")]


class ClusterState(StrEnum):
    active = "active"
    draining = "draining"
    readonly = "readonly"


# -- output ------------------------------------------------------------------------------


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int) -> NoReturn:
    _err().print(f"error: {message}", markup=False)
    raise typer.Exit(code)


HINTS = {
    401: "pass --token or set BERTH_TOKEN (`berth tokens` prints the embedded stack's tokens)",
    403: "this needs another token, e.g. the admin one for clusters, types and quotas (`berth tokens`)",
    500: "the provisioner failed; under `berth up` its log is <data dir>/logs/provisioner.log",
}


def _problem(resp: httpx.Response) -> NoReturn:
    """Show an error response (problem+json or not) on stderr; exit 2 for 4xx, 1 otherwise."""
    code = 2 if resp.status_code < 500 else 1
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = resp.text.strip()[:500] or resp.reason_phrase
        fail(f"{resp.request.method} {resp.request.url.path} answered {resp.status_code}: {text}", code)
    err = _err()
    title, detail = body.get("title") or resp.reason_phrase, body.get("detail")
    reason = body.get("reason") or body.get("code")
    line = f"error: {title} ({resp.status_code}{f', {reason}' if reason else ''})"
    err.print(line, style="bold red", markup=False)
    if detail and detail != title:
        err.print(f"  {detail}", markup=False)
    for item in body.get("errors") or []:
        if isinstance(item, dict):
            err.print(f"  - {item.get('field') or 'body'}: {item.get('message')}", markup=False)
    extra = {
        k: v
        for k, v in body.items()
        if k not in {"type", "title", "status", "detail", "code", "reason", "instance", "errors"}
    }
    for key, value in extra.items():
        if isinstance(value, list):
            err.print(f"  {key}:", markup=False)
            for item in value:
                err.print(f"    - {_flat(item)}", markup=False)
        else:
            err.print(f"  {key}: {_flat(value)}", markup=False)
    hint = HINTS.get(resp.status_code) or (HINTS[500] if code == 1 else None)
    if hint:
        err.print(f"  hint: {hint}", markup=False)
    raise typer.Exit(code)


def _flat(value: Any) -> str:
    """A problem's extra member on one line: `k=v` pairs for objects."""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T" and value[4:5] == "-":
        return value[:19].replace("T", " ")  # ISO timestamps, to the second
    return str(value)


def _gib(value: Any) -> str:
    return "-" if value is None else f"{int(value) / 2**30:.1f}"


Column = tuple[str, Callable[[dict[str, Any]], Any]]


def _col(header: str, key: str) -> Column:
    return header, lambda row: row.get(key)


VOLUME_COLS = [
    _col("ID", "id"),
    _col("NAME", "name"),
    _col("GiB", "size_gib"),
    _col("TYPE", "volume_type"),
    _col("ZONE", "zone"),
    _col("STATUS", "status"),
    _col("CLUSTER", "cluster_id"),
    _col("CREATED", "created_at"),
]
SNAPSHOT_COLS = [
    _col("ID", "id"),
    _col("NAME", "name"),
    _col("VOLUME", "volume_id"),
    _col("GiB", "size_gib"),
    _col("STATUS", "status"),
    _col("CREATED", "created_at"),
]
CLUSTER_COLS = [
    _col("ID", "id"),
    _col("NAME", "name"),
    _col("STATE", "state"),
    _col("ZONE", "zone"),
    _col("TYPES", "volume_types"),
    _col("CAPACITY GiB", "capacity_gib"),
    _col("OVERCOMMIT", "overcommit_ratio"),
    _col("PROVISIONED GiB", "provisioned_gib"),
    _col("VOLUMES", "volume_count"),
    ("DISK FREE GiB", lambda row: _gib(row.get("backend_free_bytes"))),
]
TYPE_COLS = [_col("NAME", "name"), _col("DESCRIPTION", "description")]


def _table(rows: Sequence[dict[str, Any]], cols: Sequence[Column]) -> None:
    table = Table(header_style="bold")
    for header, _ in cols:
        table.add_column(header, no_wrap=header in {"ID", "VOLUME", "CLUSTER"}, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(get(row)) for _, get in cols))
    _out().print(table)


def _record(body: dict[str, Any]) -> None:
    """One resource, one field per line."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in body.items():
        table.add_row(key, _cell(value))
    _out().print(table)


# -- the one HTTP helper -------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    url: str
    token: str
    as_json: bool

    def call(
        self, method: str, path: str, *, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> Any:
        """One request; the decoded JSON body (None for 204). Errors end the command."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            with httpx.Client(
                base_url=self.url, timeout=TIMEOUT, headers={"Authorization": f"Bearer {self.token}"}
            ) as c:
                resp = c.request(method, path, json=body, params=query)
        except httpx.TimeoutException:
            fail(f"the provisioner at {self.url} did not answer within {TIMEOUT.read:g} s", 1)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the provisioner at {self.url} ({type(exc).__name__}); is `berth up` running?", 1)
        if resp.is_error:
            _problem(resp)
        return resp.json() if resp.content else None

    def show(self, body: Any, human: Callable[[Any], None]) -> None:
        if self.as_json:
            typer.echo(json.dumps(body, indent=2))
        else:
            human(body)

    def pages(self, path: str, params: dict[str, Any], all_pages: bool) -> dict[str, Any]:
        """A list endpoint's first page, or every page merged (`next_token` then null)."""
        page: dict[str, Any] = self.call("GET", path, params=params)
        items = list(page["items"])
        while all_pages and page.get("next_token"):
            page = self.call("GET", path, params={**params, "starting_token": page["next_token"]})
            items.extend(page["items"])
        return {**page, "items": items}

    def show_list(self, page: dict[str, Any], cols: Sequence[Column]) -> None:
        self.show(page, lambda p: _table(p["items"], cols))
        if not self.as_json and page.get("next_token"):
            _err().print(f"more: --starting-token {page['next_token']} (or --all-pages)", markup=False)


def _token(explicit: str | None, name: str) -> str:
    if explicit:
        return explicit
    path = Path(os.environ.get("BERTH_DATA_DIR") or ".berth") / "tokens.json"
    found: str | None
    try:
        found = read_tokens(path).get(name)
    except FileNotFoundError:
        found = None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"cannot read the token file {path}: {exc}", 2)
    if not found:
        fail(
            f"no token: pass --token or set BERTH_TOKEN (no {name!r} token in {path}; "
            "`berth up` creates it, or set BERTH_DATA_DIR to the stack's data directory)",
            2,
        )
    return found


def _seg(value: str) -> str:
    """A path segment: an id or tenant can never reach another endpoint."""
    return quote(value, safe="")


def api(url: str, token: str | None, as_json: bool, *, admin: bool = False) -> Api:
    return Api(url.rstrip("/"), _token(token, "admin" if admin else "demo"), as_json)


# -- commands ------------------------------------------------------------------------------

volumes = typer.Typer(help="Volumes of a tenant (token: demo by default).", no_args_is_help=True)
snapshots = typer.Typer(help="Snapshots of volumes (token: demo by default).", no_args_is_help=True)
clusters = typer.Typer(help="Storage clusters (admin).", no_args_is_help=True)
vtypes = typer.Typer(help="Volume types (create: admin).", no_args_is_help=True)
quotas = typer.Typer(help="Per-tenant quotas (set: admin).", no_args_is_help=True)


@volumes.command("create")
def volume_create(
    name: str,
    size: Annotated[int, typer.Option("--size", help="Size in GiB.")],
    volume_type: Annotated[str, typer.Option("--type", help="Volume type, e.g. standard.")],
    zone: Annotated[str | None, typer.Option(help="Availability zone.")] = None,
    from_snapshot: Annotated[str | None, typer.Option("--from-snapshot", help="Snapshot id to copy.")] = None,
    from_volume: Annotated[str | None, typer.Option("--from-volume", help="Volume id to clone.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create a volume (the name is the idempotency key: the same request again returns it)."""
    a = api(url, token, as_json)
    body = {
        "name": name,
        "size_gib": size,
        "volume_type": volume_type,
        "zone": zone,
        "source_snapshot_id": from_snapshot,
        "source_volume_id": from_volume,
    }
    vol = a.call("POST", "/v1/volumes", body={k: v for k, v in body.items() if v is not None})
    a.show(vol, _record)
    if vol.get("status") == "creating":
        _err().print(f"still creating; watch it with: berth volumes get {vol['id']}", markup=False)


@volumes.command("list")
def volume_list(
    limit: Limit = 100,
    starting_token: StartingToken = None,
    all_pages: AllPages = False,
    tenant: Annotated[str | None, typer.Option(help="Another tenant's volumes (admin only).")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List the tenant's volumes."""
    a = api(url, token, as_json)
    params = {"limit": limit, "starting_token": starting_token, "tenant": tenant}
    a.show_list(a.pages("/v1/volumes", params, all_pages), VOLUME_COLS)


@volumes.command("get")
def volume_get(volume_id: str, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Show one volume."""
    a = api(url, token, as_json)
    a.show(a.call("GET", f"/v1/volumes/{_seg(volume_id)}"), _record)


@volumes.command("expand")
def volume_expand(
    volume_id: str,
    size: Annotated[int, typer.Option("--size", help="New size in GiB (larger than now).")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Grow a volume."""
    a = api(url, token, as_json)
    a.show(a.call("POST", f"/v1/volumes/{volume_id}/expand", body={"size_gib": size}), _record)


@volumes.command("delete")
def volume_delete(volume_id: str, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Delete a volume and its data."""
    a = api(url, token, as_json)
    a.call("DELETE", f"/v1/volumes/{_seg(volume_id)}")
    a.show({"id": volume_id, "deleted": True}, lambda _: _out().print(f"deleted volume {volume_id}", markup=False))


@snapshots.command("create")
def snapshot_create(
    name: str,
    volume: Annotated[str, typer.Option("--volume", help="Id of the volume to snapshot.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Snapshot a volume."""
    a = api(url, token, as_json)
    a.show(a.call("POST", "/v1/snapshots", body={"name": name, "volume_id": volume}), _record)


@snapshots.command("list")
def snapshot_list(
    volume: Annotated[str | None, typer.Option("--volume", help="Only this volume's snapshots.")] = None,
    limit: Limit = 100,
    starting_token: StartingToken = None,
    all_pages: AllPages = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List the tenant's snapshots."""
    a = api(url, token, as_json)
    params = {"volume_id": volume, "limit": limit, "starting_token": starting_token}
    a.show_list(a.pages("/v1/snapshots", params, all_pages), SNAPSHOT_COLS)


@snapshots.command("get")
def snapshot_get(snapshot_id: str, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Show one snapshot."""
    a = api(url, token, as_json)
    a.show(a.call("GET", f"/v1/snapshots/{_seg(snapshot_id)}"), _record)


@snapshots.command("delete")
def snapshot_delete(snapshot_id: str, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Delete a snapshot."""
    a = api(url, token, as_json)
    a.call("DELETE", f"/v1/snapshots/{_seg(snapshot_id)}")
    a.show(
        {"id": snapshot_id, "deleted": True}, lambda _: _out().print(f"deleted snapshot {snapshot_id}", markup=False)
    )


@clusters.command("register")
def cluster_register(
    name: str,
    root: Annotated[Path, typer.Option("--root", help="File backend directory on the provisioner's host.")],
    volume_types: Annotated[str, typer.Option("--types", help="Volume types served, comma-separated.")],
    capacity: Annotated[int, typer.Option("--capacity", help="Capacity in GiB.")],
    zone: Annotated[str, typer.Option(help="Availability zone.")] = "default",
    overcommit: Annotated[float, typer.Option(help="Overcommit ratio (thin provisioning), 1-100.")] = 1.0,
    state: Annotated[ClusterState, typer.Option(help="Initial state.")] = ClusterState.active,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Register a file-backed storage cluster; an active one takes new volumes at once."""
    a = api(url, token, as_json, admin=True)
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
    a.show(a.call("POST", "/v1/clusters", body=body), _record)


@clusters.command("list")
def cluster_list(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """List storage clusters with capacity and provisioned figures."""
    a = api(url, token, as_json, admin=True)
    a.show_list(a.call("GET", "/v1/clusters"), CLUSTER_COLS)


@clusters.command("set-state")
def cluster_set_state(
    cluster_id: str,
    state: ClusterState,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Set a cluster's state: active takes new volumes, draining and readonly take none."""
    a = api(url, token, as_json, admin=True)
    a.show(a.call("PATCH", f"/v1/clusters/{_seg(cluster_id)}", body={"state": state.value}), _record)


@vtypes.command("create")
def type_create(
    name: str,
    description: Annotated[str, typer.Option(help="What the type offers.")] = "",
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create a volume type (clusters then serve it by name)."""
    a = api(url, token, as_json, admin=True)
    a.show(a.call("POST", "/v1/volume-types", body={"name": name, "description": description}), _record)


@vtypes.command("list")
def type_list(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """List volume types."""
    a = api(url, token, as_json, admin=True)
    a.show_list(a.call("GET", "/v1/volume-types"), TYPE_COLS)


@quotas.command("get")
def quota_get(tenant: str, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Show a tenant's quota and usage."""
    a = api(url, token, as_json, admin=True)
    a.show(a.call("GET", f"/v1/quotas/{_seg(tenant)}"), _record)


@quotas.command("set")
def quota_set(
    tenant: str,
    volume_count: Annotated[int, typer.Option("--volumes", help="Most volumes the tenant may have.")],
    gigabytes: Annotated[int, typer.Option("--gigabytes", help="Most GiB the tenant may provision.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Set a tenant's quota."""
    a = api(url, token, as_json, admin=True)
    a.show(a.call("PUT", f"/v1/quotas/{_seg(tenant)}", body={"volumes": volume_count, "gigabytes": gigabytes}), _record)


def register(app: typer.Typer) -> None:
    app.add_typer(volumes, name="volumes")
    app.add_typer(snapshots, name="snapshots")
    app.add_typer(clusters, name="clusters")
    app.add_typer(vtypes, name="types")
    app.add_typer(quotas, name="quotas")

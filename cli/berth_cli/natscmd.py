"""`berth nats ...` and `berth events credentials`: the bus's accounts, permissions and
credentials (`berth_shared.natsauth`, docs/nats-security.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from berth_cli.client import AsJson, ProvisionerUrl, Token, api
from berth_cli.output import Column, emit, fail, note, record, table
from berth_cli.stackinfo import StackNotFound, find_stack
from berth_shared.natsauth import IDENTITIES, AuthMaterial, identity_permissions, user_name, write_secret
from berth_shared.settings import Settings

nats = typer.Typer(help="NATS accounts, permissions and credentials.", no_args_is_help=True)
events = typer.Typer(help="Subscribing to a tenant's events.", no_args_is_help=True)

CREDS_COLS = [
    Column("IDENTITY", "identity"),
    Column("USER", "user"),
    Column("CREDS", "creds", id=True),
    Column("PUBLISHES", lambda r: ", ".join(r["publish"][:3]) + (" ..." if len(r["publish"]) > 3 else ""), drop=1),
]


@nats.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Where to keep the material (created; keys stay there).")],
    stream: Annotated[
        str, typer.Option(help="The events stream's name (BERTH_EVENTS_STREAM).")
    ] = Settings().events_stream,
    as_json: AsJson = False,
) -> None:
    """Make (or refresh) an installation's NATS operator, accounts and credentials: for
    docker compose and Kubernetes (the embedded stack makes its own)."""
    auth = AuthMaterial(directory).ensure(stream)
    made = {
        "auth_conf": str(auth.auth_conf),
        "tenant_issuer": str(auth.issuer_file),
        "creds": {identity: str(auth.creds(identity)) for identity in IDENTITIES},
    }
    emit(made, as_json, lambda _: _describe(auth))


def _describe(auth: AuthMaterial) -> None:
    typer.echo(f"nats-server: include {auth.auth_conf}")
    typer.echo(f"issuer of tenant credentials (the provisioner's BERTH_NATS_TENANT_ISSUER): {auth.issuer_file}")
    typer.echo("credentials (each service's BERTH_NATS_CREDS):")
    for identity in IDENTITIES:
        typer.echo(f"  {identity:<12} {auth.creds(identity)}")
    note(f"keys (operator, accounts) are in {auth.dir / 'keys'}: keep them, offline, to re-issue")


@nats.command("creds")
def creds(
    identity: Annotated[str | None, typer.Argument(help="Print this identity's .creds file.")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="BERTH_DATA_DIR", show_default=False, help="The stack's data directory."),
    ] = None,
    stream: Annotated[
        str, typer.Option(help="The events stream (for the permissions shown).")
    ] = Settings().events_stream,
    as_json: AsJson = False,
) -> None:
    """The embedded stack's NATS credentials: who exists, what each may publish, where its
    .creds file is (`nats --creds <file>`); with IDENTITY, that file."""
    try:
        stack = find_stack(data_dir)
    except StackNotFound as exc:
        fail(str(exc), 1)
    auth = AuthMaterial(Path(stack.info.get("nats_auth") or stack.data_dir / "nats-auth"))
    if not auth.auth_conf.exists():
        fail(f"no NATS credentials in {auth.dir}: `berth up` makes them", 1)
    if identity is not None:
        if identity not in IDENTITIES:
            fail(f"no identity {identity!r}; there are: {', '.join(IDENTITIES)}", 2)
        typer.echo(auth.creds(identity).read_text(), nl=False)
        return
    rows: list[dict[str, Any]] = []
    for name in IDENTITIES:
        perms = identity_permissions(name, stream)
        rows.append(
            {
                "identity": name,
                "user": user_name(name),
                "creds": str(auth.creds(name)),
                "publish": perms.pub,
                "subscribe": perms.sub,
            }
        )
    emit(rows, as_json, lambda r: table(r, CREDS_COLS))
    if not as_json:
        note("a tenant's subscriber credentials: `berth events credentials` (docs/nats-security.md)")


@events.command("credentials")
def event_credentials(
    tenant: Annotated[str | None, typer.Option(help="Another tenant's (admin only).")] = None,
    consumer: Annotated[str, typer.Option(help="The durable consumer's name (<tenant>@<name>).")] = "events",
    deliver: Annotated[str, typer.Option(help="all: from the stream's start; new: from now.")] = "all",
    ttl_days: Annotated[int, typer.Option("--ttl-days", help="How long the credentials are valid.")] = 365,
    out: Annotated[Path | None, typer.Option("--out", help="Write the .creds file here (mode 0600).")] = None,
    url: ProvisionerUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Issue NATS credentials that read this tenant's events (berth.events.<tenant>.>) through
    its own durable consumer, and nothing else."""
    a = api("provisioner", url, token, as_json, admin=tenant is not None)
    body = {"tenant": tenant, "consumer": consumer, "deliver": deliver, "ttl_days": ttl_days}
    got: dict[str, Any] = a.call("POST", "/v1/event-credentials", body={k: v for k, v in body.items() if v is not None})
    if out is not None:
        write_secret(out, got["creds"])
        got = {**got, "creds": str(out)}
    if as_json:
        typer.echo(json.dumps(got, indent=2))
        return
    if out is None:
        typer.echo(got["creds"], nl=False)
        note("(the .creds above is a secret; --out FILE writes it to a file instead)")
    else:
        record({k: v for k, v in got.items() if k != "creds"} | {"creds file": str(out)})
    note(
        f"read them with any NATS client: --creds <file>, inbox prefix {got['inbox_prefix']}, "
        f"pull consumer {got['consumer']} on stream {got['stream']}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(nats, name="nats")
    app.add_typer(events, name="events")

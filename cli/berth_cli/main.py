"""`berth`: run the embedded stack and operate volumes, snapshots and clusters over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from berth_cli.output import fail, note
from berth_cli.stack import StackConfig, run_up
from berth_cli.stackinfo import AlreadyRunning, StackNotFound, find_stack
from berth_shared.auth import read_tokens
from berth_shared.settings import DEFAULT_PORTS

app = typer.Typer(help="Berth: storage control plane for Kubernetes on OpenStack and Ceph.", no_args_is_help=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="BERTH_DATA_DIR", help="Where the embedded stack keeps everything.")
]


@app.command()
def up(
    data_dir: DataDir = Path(".berth"),
    host: Annotated[str, typer.Option(help="Address every service binds to.")] = "127.0.0.1",
    nats_port: Annotated[int, typer.Option(envvar="BERTH_NATS_PORT")] = 4322,
    provisioner_port: Annotated[int, typer.Option(envvar="BERTH_PROVISIONER_PORT")] = DEFAULT_PORTS["provisioner"],
    attacher_port: Annotated[int, typer.Option(envvar="BERTH_ATTACHER_PORT")] = DEFAULT_PORTS["attacher"],
    watcher_port: Annotated[int, typer.Option(envvar="BERTH_WATCHER_PORT")] = DEFAULT_PORTS["watcher"],
    alerts_port: Annotated[int, typer.Option(envvar="BERTH_ALERTS_PORT")] = DEFAULT_PORTS["alerts"],
) -> None:
    """Run the whole system on the embedded default, in the foreground (Ctrl-C stops it)."""
    ports = {"provisioner": provisioner_port, "attacher": attacher_port, "watcher": watcher_port, "alerts": alerts_port}
    try:
        run_up(StackConfig(data_dir=data_dir, host=host, nats_port=nats_port, ports=ports), echo=typer.echo)
    except AlreadyRunning as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except (RuntimeError, TimeoutError, OSError) as exc:  # a part did not start; everything is stopped again
        typer.echo(f"berth up failed: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def tokens(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="BERTH_DATA_DIR",
            show_default=False,
            help="The stack's data directory [default: the running stack's].",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the embedded stack's admin and demo tokens (of the running stack, or --data-dir)."""
    try:
        stack = find_stack(data_dir)
    except StackNotFound as exc:
        fail(str(exc), 1)
    found = read_tokens(stack.tokens_path)
    if as_json:
        typer.echo(json.dumps(found))
        return
    for name, token in found.items():
        typer.echo(f"{name:<6} {token}")
    state = "running" if stack.running else "not running"
    note(f"\n(stack in {stack.data_dir}, {state})")
    note(f"export BERTH_TOKEN={found.get('demo', '')}   # then: berth volumes list")


def _register_resources() -> None:
    try:
        from berth_cli import alertscmd, attachercmd, natscmd, resources, watchercmd
    except ImportError:  # pragma: no cover - during bootstrap only
        return
    resources.register(app)
    attachercmd.register(app)
    natscmd.register(app)
    watchercmd.register(app)
    alertscmd.register(app)


_register_resources()

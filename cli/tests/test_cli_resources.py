"""`berth volumes|snapshots|clusters|types|quotas` against the real provisioner app served by
uvicorn on a free port (real nats-server, the suite's database)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from berth_cli.main import app
from berth_provisioner.app import create_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.auth import ensure_token_file
from berth_shared.natsserver import free_port
from berth_testing import MakeSettings, Tenants


@dataclass
class Cli:
    url: str
    data_dir: Path
    tenants: Tenants
    runner: CliRunner

    def run(self, *args: str, code: int = 0, token: str | None = None) -> Result:
        env = {"BERTH_URL": self.url, "BERTH_DATA_DIR": str(self.data_dir), "BERTH_TOKEN": token, "COLUMNS": "80"}
        result = self.runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, (
            f"berth {' '.join(args)}: exit {result.exit_code}, wanted {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
        )
        return result

    def json(self, *args: str, token: str | None = None) -> Any:
        return json.loads(self.run(*args, "--json", token=token).stdout)


@pytest.fixture
def start_cli(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, serve_app: Callable[[FastAPI], str]
) -> Iterator[Callable[..., Cli]]:
    """Serve the provisioner (settings overridable) and give a CLI driver pointed at it."""

    def start(**overrides: Any) -> Cli:
        url = serve_app(create_app(make_settings(ProvisionerSettings, **overrides)))
        data_dir = tmp_path / "cli-data"
        data_dir.mkdir(exist_ok=True)
        return Cli(url, data_dir, tenants, CliRunner())

    yield start


@pytest.fixture
def cli(start_cli: Callable[..., Cli]) -> Cli:
    return start_cli()


def test_volume_and_snapshot_lifecycle(cli: Cli) -> None:
    a, b = cli.tenants.a, cli.tenants.b

    vol = cli.json("volumes", "create", "db-0", "--size", "1", "--type", "standard", token=a)
    assert (vol["name"], vol["size_gib"], vol["status"], vol["tenant"]) == (
        "db-0",
        1,
        "available",
        cli.tenants.tenant_a,
    )
    again = cli.json("volumes", "create", "db-0", "--size", "1", "--type", "standard", token=a)
    assert again["id"] == vol["id"], "the name is the idempotency key"

    shown = cli.run("volumes", "get", vol["id"], token=a).stdout
    assert vol["id"] in shown and "db-0" in shown and "available" in shown
    assert cli.json("volumes", "get", "db-0", token=a)["id"] == vol["id"], "a name works where an id does"
    err = cli.run("volumes", "get", "db-9", code=2, token=a).stderr
    assert "no volume named or with id 'db-9'" in err
    assert [v["id"] for v in cli.json("volumes", "list", token=a)["items"]] == [vol["id"]]
    table = cli.run("volumes", "list", token=a).stdout
    assert vol["id"] in table and "db-0" in table and "standard" in table

    grown = cli.json("volumes", "expand", "db-0", "--size", "3", token=a)
    assert (grown["size_gib"], grown["status"]) == (3, "available")
    assert cli.json("volumes", "retype", "db-0", "--type", "standard", token=a)["volume_type"] == "standard"
    err = cli.run("volumes", "retype", "db-0", "--type", "gold", code=2, token=a).stderr
    assert "unknown volume type" in err and "standard" in err, err

    snap = cli.json("snapshots", "create", "snap-0", "--volume", "db-0", token=a)
    assert (snap["volume_id"], snap["size_gib"], snap["status"]) == (vol["id"], 3, "available")
    listed = cli.json("snapshots", "list", "--volume", vol["id"], token=a)
    assert [s["id"] for s in listed["items"]] == [snap["id"]]
    assert "snap-0" in cli.run("snapshots", "get", "snap-0", token=a).stdout
    assert snap["id"] in cli.run("snapshots", "list", token=a).stdout

    copy = cli.json(
        "volumes", "create", "db-1", "--size", "3", "--type", "standard", "--from-snapshot", snap["id"], token=a
    )
    assert (copy["source_snapshot_id"], copy["status"]) == (snap["id"], "available")

    # Another tenant sees none of it.
    err = cli.run("volumes", "get", copy["id"], code=2, token=b).stderr
    assert "volume_not_found" in err
    assert cli.json("volumes", "list", token=b)["items"] == []

    # A volume with snapshots cannot go first: a 409 with its reason.
    err = cli.run("volumes", "delete", vol["id"], code=2, token=a).stderr
    assert "409" in err and "volume_has_snapshots" in err and "delete them first" in err

    assert "deleted snapshot" in cli.run("snapshots", "delete", snap["id"], token=a).stdout
    assert cli.json("volumes", "delete", copy["id"], token=a) == {"id": copy["id"], "deleted": True}
    cli.run("volumes", "delete", vol["id"], token=a)

    err = cli.run("volumes", "get", vol["id"], code=2, token=a).stderr
    assert "Not found (404, volume_not_found)" in err and f"volume {vol['id']} not found" in err
    assert cli.json("volumes", "list", token=a)["items"] == []
    assert cli.json("snapshots", "list", token=a)["items"] == []


def test_paging(cli: Cli) -> None:
    a = cli.tenants.a
    ids = sorted(
        cli.json("volumes", "create", f"v{i}", "--size", "1", "--type", "standard", token=a)["id"] for i in range(3)
    )

    first = cli.json("volumes", "list", "--limit", "2", token=a)
    assert [v["id"] for v in first["items"]] == ids[:2] and first["next_token"]
    rest = cli.json("volumes", "list", "--limit", "2", "--starting-token", first["next_token"], token=a)
    assert [v["id"] for v in rest["items"]] == ids[2:] and rest["next_token"] is None
    every = cli.json("volumes", "list", "--limit", "1", "--all-pages", token=a)
    assert [v["id"] for v in every["items"]] == ids and every["next_token"] is None

    human = cli.run("volumes", "list", "--limit", "2", token=a)
    assert f"--starting-token {first['next_token']}" in human.stderr
    assert ids[1] in human.stdout and ids[2] not in human.stdout


def test_refusals_are_problems_with_exit_2(cli: Cli) -> None:
    a = cli.tenants.a

    err = cli.run("volumes", "create", "x", "--size", "1", "--type", "gold", code=2, token=a).stderr
    assert "unknown_volume_type" in err and "unknown volume type 'gold'" in err
    assert "the volume types are: standard" in err and "valid_types:" in err and "- standard" in err

    res = cli.run("volumes", "create", "x", "--size", "0", "--type", "standard", "--json", code=2, token=a)
    assert res.stdout == "", "--json keeps errors off stdout"
    assert "422" in res.stderr and "size_gib" in res.stderr

    err = cli.run("volumes", "list", code=2, token="not-a-token").stderr
    assert "401" in err and "invalid token" in err and "BERTH_TOKEN" in err

    err = cli.run("clusters", "list", code=2, token=a).stderr
    assert "403" in err and "admin role" in err and "hint:" in err

    err = cli.run("volumes", "get", "../clusters", code=2, token=a).stderr
    assert "no volume named or with id '../clusters'" in err, "a reference is looked up, never a path"

    # Nothing changed.
    assert cli.json("volumes", "list", token=a)["items"] == []


def test_unreachable_provisioner_exits_1(cli: Cli) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    res = cli.run("volumes", "list", "--url", dead, code=1, token=cli.tenants.a)
    assert f"cannot reach the provisioner at {dead}" in res.stderr and "berth up" in res.stderr


def test_admin_clusters_types_quotas(cli: Cli, tmp_path: Path) -> None:
    admin, a, ta = cli.tenants.admin, cli.tenants.a, cli.tenants.tenant_a

    fast = cli.json("types", "create", "fast", "--description", "NVMe", token=admin)
    assert fast == {"name": "fast", "description": "NVMe"}
    assert {"fast", "standard"} <= {t["name"] for t in cli.json("types", "list", token=admin)["items"]}
    assert "NVMe" in cli.run("types", "list", token=admin).stdout

    root = tmp_path / "pool-fast"
    cluster = cli.json(
        "clusters", "register", "pool-fast", "--root", str(root), "--types", "fast, standard",
        "--capacity", "100", "--zone", "z1", "--overcommit", "2", token=admin,
    )  # fmt: skip
    assert cluster["volume_types"] == ["fast", "standard"]
    assert (cluster["state"], cluster["zone"], cluster["capacity_gib"], cluster["overcommit_ratio"]) == (
        "active", "z1", 100, 2.0,
    )  # fmt: skip
    err = cli.run("clusters", "register", "pool-fast", "--root", str(root), "--types", "fast", "--capacity", "1",
                  code=2, token=admin).stderr  # fmt: skip
    assert "409" in err and "already registered" in err and cluster["id"] in err

    # The new cluster takes new volumes at once.
    vol = cli.json("volumes", "create", "f0", "--size", "5", "--type", "fast", "--zone", "z1", token=a)
    assert vol["cluster_id"] == cluster["id"]
    listed = {c["name"]: c for c in cli.json("clusters", "list", token=admin)["items"]}
    assert (listed["pool-fast"]["provisioned_gib"], listed["pool-fast"]["volume_count"]) == (5, 1)
    table = cli.run("clusters", "list", token=admin).stdout
    assert "pool-fast" in table and cluster["id"] in table and "local" in table

    drained = cli.json("clusters", "set-state", "pool-fast", "draining", token=admin)
    assert drained["state"] == "draining"
    err = cli.run("volumes", "create", "f1", "--size", "1", "--type", "fast", code=2, token=a).stderr
    assert "no_valid_cluster" in err and "- cluster=pool-fast reason=" in err, err
    cli.run("clusters", "set-state", cluster["id"], "sideways", code=2, token=admin)  # a usage error

    quota = cli.json("quotas", "set", ta, "--volumes", "1", "--gigabytes", "50", token=admin)
    assert (quota["volumes"], quota["gigabytes"], quota["used_volumes"], quota["used_gigabytes"]) == (1, 50, 1, 5)
    err = cli.run("volumes", "create", "s0", "--size", "1", "--type", "standard", code=2, token=a).stderr
    assert "quota_exceeded" in err
    assert cli.json("quotas", "get", ta, token=admin)["used_volumes"] == 1
    assert "used_gigabytes" in cli.run("quotas", "get", ta, token=admin).stdout


def test_token_falls_back_to_the_embedded_token_file(start_cli: Callable[..., Cli], tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    tokens = ensure_token_file(stack_dir / "tokens.json")
    cli = start_cli(token_file=stack_dir / "tokens.json")

    cli.data_dir = tmp_path / "elsewhere"
    err = cli.run("volumes", "list", code=2).stderr
    assert "no token" in err and "BERTH_TOKEN" in err

    cli.data_dir = stack_dir  # BERTH_DATA_DIR points at the stack: demo for volumes, admin for clusters
    vol = cli.json("volumes", "create", "mine", "--size", "2", "--type", "standard")
    assert vol["tenant"] == "demo"
    assert [c["name"] for c in cli.json("clusters", "list")["items"]] == ["local"]
    assert cli.json("quotas", "get", "demo")["used_gigabytes"] == 2
    # An explicit token wins over the file.
    cli.run("clusters", "list", code=2, token=tokens["demo"])


class _Failing(BaseHTTPRequestHandler):
    """A server that fails every request: a problem body on /v1/volumes, plain text elsewhere."""

    def do_GET(self) -> None:
        problem = self.path.startswith("/v1/volumes?")
        body = (
            json.dumps({"title": "Service unavailable", "status": 503, "detail": "bus down", "reason": "unavailable"})
            if problem
            else "upstream exploded"
        ).encode()
        self.send_response(503 if problem else 500)
        self.send_header("Content-Type", "application/problem+json" if problem else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_server_failures_exit_1(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        no_tenants = Tenants(tmp_path / "tokens.json", "", "", "", "", "")
        cli = Cli(f"http://127.0.0.1:{server.server_address[1]}", tmp_path, no_tenants, CliRunner())
        err = cli.run("volumes", "list", code=1, token="t").stderr
        assert "Service unavailable (503, unavailable)" in err and "bus down" in err and "provisioner.log" in err
        vid = "vol-" + "0" * 32  # an id: asked for directly, no name lookup first
        err = cli.run("volumes", "get", vid, code=1, token="t").stderr
        assert f"GET /v1/volumes/{vid} answered 500: upstream exploded" in err
    finally:
        server.shutdown()
        server.server_close()

"""`berth attachments|nodes|fences` against the real provisioner and attacher apps served
by uvicorn (real nats-server, the suite's database): an operator's day-2 round, from a
volume attached to a node to fencing that node and unfencing it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from typer.testing import CliRunner

from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_cli.main import app
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_testing import MakeSettings, Tenants


def test_attachments_nodes_fence_unfence(
    make_settings: MakeSettings, tenants: Tenants, serve_app: Callable[[FastAPI], str], tmp_path: Path
) -> None:
    prov = serve_app(provisioner_app(make_settings(ProvisionerSettings)))
    # Liveness out of the way (a silent node is dead only after an hour): fencing is the operator's.
    att_settings = make_settings(AttacherSettings, dead_after_s=3600.0, monitor_interval_s=0.2)
    att = serve_app(attacher_app(att_settings))
    env = {"BERTH_URL": prov, "BERTH_ATTACHER_URL": att, "BERTH_DATA_DIR": str(tmp_path / "none"), "COLUMNS": "80"}

    def berth(*args: str, token: str = tenants.admin, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args), env={**env, "BERTH_TOKEN": token})
        assert result.exit_code == code, f"berth {' '.join(args)}: {result.exit_code}\n{result.stdout}{result.stderr}"
        return result.stdout if code == 0 else result.stderr

    def as_json(*args: str, token: str = tenants.admin) -> Any:
        return json.loads(berth(*args, "--json", token=token))

    admin = {"Authorization": f"Bearer {tenants.admin}"}
    beat = httpx.post(f"{att}/v1/nodes/heartbeat", json={"node_id": "node-a", "boot_id": "b1"}, headers=admin)
    assert beat.status_code == 200, beat.text
    vol = as_json("volumes", "create", "db-0", "--size", "1", "--type", "standard", token=tenants.a)
    published = httpx.post(
        f"{att}/v1/attachments", json={"volume_id": vol["id"], "node_id": "node-a"},
        headers={"Authorization": f"Bearer {tenants.a}"},
    )  # fmt: skip
    assert published.status_code == 201, published.text

    # Who holds what: every tenant's for the admin, by volume name for its tenant.
    [held] = as_json("attachments", "list")["items"]
    assert (held["volume_id"], held["node_id"], held["state"]) == (vol["id"], "node-a", "attached")
    mine = as_json("attachments", "list", "--volume", "db-0", token=tenants.a)["items"]
    assert [x["id"] for x in mine] == [held["id"]]
    assert as_json("attachments", "list", token=tenants.b)["items"] == []
    table = berth("attachments", "list")
    assert vol["id"] in table and "node-a" in table and all(len(line) <= 80 for line in table.splitlines())

    nodes = berth("nodes", "list")
    assert "node-a" in nodes and "alive" in nodes

    # Fence: declared down, cut off at the storage, its volume released; progress while it runs.
    fenced = as_json("nodes", "fence", "node-a", "--reason", "disk controller failed")
    assert (fenced["state"], fenced["fence_epoch"]) == ("fenced", 1)
    [fence] = as_json("fences", "list", "--node", "node-a")["items"]
    assert fence["state"] == "done" and "disk controller failed" in fence["reason"]
    assert [x["state"] for x in as_json("attachments", "list")["items"]] == ["released"]
    assert "fenced" in berth("nodes", "get", "node-a")

    # Unfence, vouching for it; a second time there is nothing to unfence.
    assert as_json("nodes", "unfence", "node-a")["state"] == "alive"
    assert "node-a is not fenced" in berth("nodes", "unfence", "node-a", code=2)
    # A tenant's token may not fence.
    assert "403" in berth("nodes", "fence", "node-a", token=tenants.a, code=2)

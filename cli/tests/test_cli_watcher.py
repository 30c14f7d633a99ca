"""`berth watcher ...` against the real provisioner, attacher and watcher apps served by
uvicorn (real nats-server, the file cluster; no Kubernetes configured): a leak found,
quarantined on request, restored, the run records and findings shown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from typer.testing import CliRunner

from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_cli.main import app
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.backends import build_backend
from berth_testing import MakeSettings, Tenants
from berth_watcher.app import create_app as watcher_app
from berth_watcher.config import WatcherSettings


def test_find_quarantine_restore(
    make_settings: MakeSettings, tenants: Tenants, serve_app: Callable[[FastAPI], str], tmp_path: Path
) -> None:
    prov_settings = make_settings(ProvisionerSettings)
    prov = serve_app(provisioner_app(prov_settings))
    att = serve_app(attacher_app(make_settings(AttacherSettings)))
    intervals = {f"{job}_interval_s": 3600.0 for job in ("qos", "orphans", "reclaim", "usage")}
    settings = make_settings(WatcherSettings, tick_s=0.1, grace_backend_orphan_s=0.0, **intervals)
    assert isinstance(settings, WatcherSettings)
    watcher = serve_app(watcher_app(settings))
    env = {
        "BERTH_URL": prov,
        "BERTH_ATTACHER_URL": att,
        "BERTH_WATCHER_URL": watcher,
        "BERTH_DATA_DIR": str(tmp_path / "none"),
        "COLUMNS": "100",
    }

    def berth(*args: str, token: str = tenants.admin, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args), env={**env, "BERTH_TOKEN": token})
        assert result.exit_code == code, f"berth {' '.join(args)}: {result.exit_code}\n{result.stdout}{result.stderr}"
        return result.output if code == 0 else result.stderr

    def as_json(*args: str) -> Any:
        return json.loads(berth(*args, "--json"))

    root = (prov_settings.data_dir / "clusters" / "local").resolve()
    leaked = "vol-0000leakedbycli"
    asyncio.run(build_backend("file", {"root": str(root)}).create_volume(leaked, 1 << 30))
    live, trashed = root / "volumes" / f"{leaked}.img", root / "trash" / "volumes" / f"{leaked}.img"

    out = berth("watcher", "run", "orphans", "--wait", "60")
    assert "complete" in out and "source backend/local" in out, out
    [finding] = as_json("watcher", "findings", "list")["items"]
    assert (finding["kind"], finding["resource_id"]) == ("backend_orphan", leaked)
    table = berth("watcher", "findings", "list")
    assert finding["id"] in table and "backend_orphan" in table
    shown = berth("watcher", "findings", "show", finding["id"])
    assert "leaked" in shown and "berth watcher findings quarantine" in shown

    out = berth("watcher", "findings", "quarantine", finding["id"])
    assert "restore it with: berth watcher quarantine restore" in out, out
    [entry] = as_json("watcher", "quarantine", "list")["items"]
    assert (entry["object_id"], entry["state"]) == (leaked, "quarantined")
    assert trashed.exists() and not live.exists()
    assert entry["id"] in berth("watcher", "quarantine", "list")

    restored = as_json("watcher", "quarantine", "restore", entry["id"])
    assert restored["state"] == "restored"
    assert live.exists() and not trashed.exists()
    assert as_json("watcher", "quarantine", "list")["items"] == []
    assert "purging deletes the data for good" in berth("watcher", "quarantine", "purge", entry["id"], code=2)
    runs = as_json("watcher", "runs")["items"]
    assert {r["job"] for r in runs} >= {"orphans"} and all(r["status"] != "failed" for r in runs)
    # A tenant's token may not restore.
    assert "403" in berth("watcher", "quarantine", "restore", entry["id"], token=tenants.a, code=2)

"""`berth watcher qos ...` against the real provisioner and watcher apps served by uvicorn,
as root on a real loop device: a type's policy set and listed, a volume's limits shown
wanted, held and enforced, and the volume a flood holds at its limit named by
`qos status --saturated` with its load (who causes the load)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from qos_checks import attached, throttle_or_skip, writer
from typer.testing import CliRunner

from berth_cli.main import app
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_testing import MakeSettings, Tenants, needs_loop
from berth_watcher.app import create_app as watcher_app
from berth_watcher.config import WatcherSettings

pytestmark = needs_loop


def test_qos_policy_status_and_who_causes_the_load(
    make_settings: MakeSettings, tenants: Tenants, serve_app: Callable[[FastAPI], str], tmp_path: Path
) -> None:
    throttle_or_skip()
    prov_settings = make_settings(ProvisionerSettings)
    prov = serve_app(provisioner_app(prov_settings))
    intervals = {f"{job}_interval_s": 3600.0 for job in ("qos", "orphans", "reclaim", "usage")}
    watcher = serve_app(watcher_app(make_settings(WatcherSettings, tick_s=0.1, **intervals)))
    env = {"BERTH_URL": prov, "BERTH_WATCHER_URL": watcher, "BERTH_DATA_DIR": str(tmp_path / "none"), "COLUMNS": "100"}

    def berth(*args: str, token: str = tenants.admin, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args), env={**env, "BERTH_TOKEN": token})
        assert result.exit_code == code, f"berth {' '.join(args)}: {result.exit_code}\n{result.stdout}{result.stderr}"
        return result.output if code == 0 else result.stderr

    def as_json(*args: str, token: str = tenants.admin) -> Any:
        return json.loads(berth(*args, "--json", token=token))

    policy = {"write_iops": {"base": 40, "per_gib": 10, "ceiling": 1000}, "saturation_pct": 75}
    assert as_json("watcher", "qos", "set", "standard", json.dumps(policy))["write_iops"]["base"] == 40
    assert "standard" in berth("watcher", "qos", "list")
    assert "not JSON" in berth("watcher", "qos", "set", "standard", "{iops", code=2)
    hot = as_json("volumes", "create", "backup-target", "--size", "1", "--type", "standard", token=tenants.a)
    idle = as_json("volumes", "create", "idle", "--size", "1", "--type", "standard", token=tenants.a)
    root = (prov_settings.data_dir / "clusters" / "local").resolve()

    with attached(root / "volumes" / f"{hot['id']}.img") as device:
        assert "complete" in berth("watcher", "run", "qos", "--wait", "60")
        [state] = [v for v in as_json("watcher", "qos", "status")["items"] if v["volume_id"] == hot["id"]]
        assert (state["wanted"], state["applied"], state["enforced"]) == ({"write_iops": 50}, {"write_iops": 50}, True)
        with writer(device):
            time.sleep(2.0)  # the interval the load is measured over
            berth("watcher", "run", "qos", "--wait", "60")
        table = berth("watcher", "qos", "status", "--saturated")
    assert hot["id"] in table and idle["id"] not in table and "write_iops=" in table, table
    [saturated] = as_json("watcher", "qos", "status", "--saturated")["items"]
    assert saturated["volume_id"] == hot["id"] and saturated["load"]["write_iops"] >= 0.75 * 50
    # Only an admin sees every tenant's limits.
    assert "403" in berth("watcher", "qos", "status", token=tenants.a, code=2)

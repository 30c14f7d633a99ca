"""`berth silences|alerts|dashboards` against the real alerts app served by uvicorn."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from typer.testing import CliRunner

from berth_alerts.app import create_app
from berth_alerts.config import AlertsSettings
from berth_cli.main import app
from berth_shared.natsserver import free_port
from berth_testing import MakeSettings, Tenants


def test_silences_and_alerts_from_the_cli(tmp_path: Path, make_settings: MakeSettings, tenants: Tenants) -> None:
    settings = make_settings(AlertsSettings, alerts_webhook_url="http://127.0.0.1:9/none")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the alerts service did not start"
            time.sleep(0.02)
        runner = CliRunner()

        def berth(*args: str, token: str = tenants.a, code: int = 0) -> str:
            env = {"BERTH_ALERTS_URL": url, "BERTH_TOKEN": token, "COLUMNS": "100"}
            result = runner.invoke(app, list(args), env=env)
            assert result.exit_code == code, f"berth {args}: {result.exit_code}\n{result.stdout}{result.stderr}"
            return result.stdout

        made = json.loads(
            berth(
                "silences", "create", 'alertname="DiskFull"', "cluster=~eu-.*", "-c", "disk swap", "-d", "30m", "--json"
            )
        )
        assert made["state"] == "active" and made["tenant"] == tenants.tenant_a
        assert [m["op"] for m in made["matchers"]] == ["=", "=~"]
        listed = berth("silences", "list")
        assert made["id"] in listed and 'alertname="DiskFull"' in listed
        assert made["id"] not in berth("silences", "list", token=tenants.b)  # another tenant's: not seen
        berth("silences", "expire", made["id"], token=tenants.b, code=2)  # nor expired
        assert json.loads(berth("silences", "expire", made["id"], "--json"))["state"] == "expired"
        assert made["id"] not in berth("silences", "list")
        berth("silences", "create", "x", "-c", "bad", code=2)  # not a matcher: refused, exit 2

        r = httpx.post(
            f"{url}/api/v2/alerts",
            headers={"Authorization": f"Bearer {tenants.a}"},
            json=[{"labels": {"alertname": "DiskFull", "severity": "warning"}}],
        )
        assert r.status_code == 200
        rows = json.loads(berth("alerts", "list", "--json"))["items"]
        assert [(a["labels"]["alertname"], a["labels"]["tenant"]) for a in rows] == [("DiskFull", tenants.tenant_a)]
        berth("alerts", "notifications", code=2)  # admin only
        assert "default" in berth("alerts", "receivers", token=tenants.admin)
        assert "berth-alert-flow" not in berth("dashboards", "status", token=tenants.admin)  # nothing synced yet
    finally:
        server.should_exit = True
        thread.join(30)

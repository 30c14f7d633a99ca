from __future__ import annotations

from berth_alerts.app import create_app
from berth_alerts.config import AlertsSettings
from berth_testing import MakeSettings, running


async def test_alerts_starts_healthy_and_ready(make_settings: MakeSettings) -> None:
    app = create_app(make_settings(AlertsSettings))
    async with running(app) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"bus": True, "db": True}
        assert "berth_http_requests" in (await http.get("/metrics")).text

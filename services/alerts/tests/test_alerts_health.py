from __future__ import annotations

from collections.abc import Callable

from berth_alerts.app import create_app
from berth_shared.settings import Settings
from berth_testing import running


async def test_alerts_starts_healthy_and_ready(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings("alerts"))
    async with running(app) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"bus": True, "db": True}
        assert "berth_http_requests" in (await http.get("/metrics")).text

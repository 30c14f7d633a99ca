from __future__ import annotations

from berth_testing import MakeSettings, running
from berth_watcher.app import create_app
from berth_watcher.config import WatcherSettings


async def test_watcher_starts_healthy_and_ready(make_settings: MakeSettings) -> None:
    app = create_app(make_settings(WatcherSettings))
    async with running(app) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"bus": True, "db": True}
        metrics = (await http.get("/metrics")).text
        assert "berth_http_requests" in metrics and "berth_watcher_leader" in metrics

"""kill -9 of the alerts service mid-delivery (issue 9): a real process, a real messenger.

The process is SIGKILLed right after a messenger accepted a message and before the
delivery was recorded (`BERTH_CRASH_AT=alerts.delivery.after_send`): the worst moment.
Restarted on the same data, it sends what it had in flight again (same notification key,
so a messenger or webhook can drop the copy) and everything else once: nothing is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from alerts_fakes import Messenger, serve
from berth_procs import ServiceProcess

from berth_testing import Tenants, eventually

pytestmark = pytest.mark.slow


async def test_kill_9_mid_delivery_loses_nothing(
    tmp_path: Path, service_process: Callable[..., ServiceProcess], tenants: Tenants
) -> None:
    messenger = Messenger()
    async with serve(messenger.app()) as url:
        config = tmp_path / "alerts.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "hook",
                        "group_by": ["alertname"],
                        "group_wait_s": 0.2,
                        "group_interval_s": 0.5,
                        "repeat_interval_s": 0,
                        # Events other tests left in the session's stream go elsewhere.
                        "routes": [{"matchers": ['source="berth"'], "receiver": "events"}],
                    },
                    "receivers": [
                        {"name": "hook", "url": url + "/hook", "max_in_flight": 2, "backoff_initial_s": 0.2},
                        {"name": "events", "url": url + "/events"},
                    ],
                }
            )
        )
        proc = service_process(
            "alerts", extra_env={"BERTH_ALERTS_CONFIG": str(config), "BERTH_FLUSH_INTERVAL_S": "0.05"}
        )
        proc.start(crash_at="alerts.delivery.after_send")
        await proc.wait_ready()
        alerts = [
            {
                "labels": {"alertname": f"Disk{g}", "instance": f"i{i}", "severity": "warning"},
                "annotations": {"summary": "disk almost full"},
            }
            for g in range(4)
            for i in range(5)
        ]
        async with proc.client(tenants.admin) as http:
            r = await http.post("/api/v2/alerts", json=alerts)
            assert r.status_code == 200, r.text  # committed before this answer
        assert await proc.wait_exit() == -9, proc.tail()
        assert messenger.received, "the crash point is after the messenger accepted a message"
        in_flight = {r.headers["berth-notification-key"] for r in messenger.received if r.path == "/hook"}

        proc.start()
        await proc.wait_ready()
        want = {(a["labels"]["alertname"], a["labels"]["instance"]) for a in alerts}

        def told() -> set[tuple[str, str]]:
            return {(a["labels"]["alertname"], a["labels"]["instance"]) for a in messenger.alerts_seen("/hook")}

        await eventually(told, lambda s: s == want, within=20, what="every alert delivered after the restart")
        async with proc.client(tenants.admin) as http:
            notes = await eventually(
                lambda: http.get("/v1/notifications", params={"receiver": "hook"}),
                lambda r: {n["state"] for n in r.json()["items"]} == {"delivered"},
                what="every notification recorded as delivered",
            )
        assert len(notes.json()["items"]) == 4
        keys = Counter(r.headers["berth-notification-key"] for r in messenger.received if r.path == "/hook")
        # Only what was in flight at the kill came twice, and with the same key.
        assert {k for k, n in keys.items() if n > 1} <= in_flight
        assert max(keys.values()) <= 2

"""End to end in one process: ingest over HTTP, the flusher, a real fake messenger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alerts_fakes import Messenger, serve
from alerts_harness import alerts_app, alerts_settings, am_alert, am_webhook, simple_config, write_config
from sqlalchemy import select

from berth_alerts import tables as t
from berth_alerts.model import Alert
from berth_alerts.service import AlertsService
from berth_alerts.store import ingest, ingest_many
from berth_testing import MakeSettings, Tenants, eventually


async def test_alertmanager_webhook_reaches_the_messenger_once_despite_an_ha_pair(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    messenger = Messenger()
    async with serve(messenger.app()) as url:
        cfg = write_config(tmp_path, simple_config(url))
        async with alerts_app(alerts_settings(make_settings, cfg), tenants.admin) as (_, http):
            body = am_webhook(am_alert("DiskFull", instance="a"), am_alert("DiskFull", instance="b"))
            # Both Alertmanagers of an HA pair send the same group; and one retries.
            for _ in range(3):
                r = await http.post("/v1/ingest/alertmanager", json=body)
                assert r.status_code == 200, r.text
            assert r.json() == {"accepted": 2, "new": 0, "changed": 0, "duplicate": 2}
            await eventually(lambda: len(messenger.alerts_seen()), lambda n: n >= 2, what="two alerts delivered")
            await asyncio.sleep(0.8)  # longer than group_interval: a second copy would have come by now
            assert len(messenger.received) == 1
            msg = messenger.received[0].body
            assert msg["status"] == "firing" and msg["version"] == "4"
            assert sorted(a["labels"]["instance"] for a in msg["alerts"]) == ["a", "b"]
            assert messenger.received[0].headers["berth-notification-key"].startswith(msg["notificationKey"])

            # Resolved: told once, only the resolved alert.
            r = await http.post(
                "/v1/ingest/alertmanager", json=am_webhook(am_alert("DiskFull", "resolved", instance="a"))
            )
            assert r.json()["changed"] == 1
            await eventually(lambda: len(messenger.received), lambda n: n >= 2, what="resolved notification")
            resolved = messenger.received[1].body
            assert resolved["status"] == "resolved"
            assert [a["labels"]["instance"] for a in resolved["alerts"]] == ["a"]

            async def states() -> list[str]:
                return [n["state"] for n in (await http.get("/v1/notifications")).json()["items"]]

            await eventually(states, lambda s: s == ["delivered", "delivered"], what="both recorded as delivered")


async def test_malformed_payloads_get_a_400_that_says_what_and_are_kept(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    cfg = write_config(tmp_path, simple_config("http://127.0.0.1:9"))
    async with alerts_app(alerts_settings(make_settings, cfg), tenants.admin) as (_, http):
        r = await http.post(
            "/v1/ingest/alertmanager", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and "not JSON" in r.json()["detail"]
        bad = am_webhook(am_alert("X"))
        bad["alerts"][0]["status"] = "burning"
        del bad["alerts"][0]["labels"]
        r = await http.post("/v1/ingest/alertmanager", json=bad)
        assert r.status_code == 400
        problem = r.json()
        assert problem["reason"] == "malformed_payload"
        assert {e["field"] for e in problem["errors"]} == {"alerts.0.status", "alerts.0.labels"}
        r = await http.post("/api/v2/alerts", json={"labels": {}})
        assert r.status_code == 400 and "array" in r.json()["detail"]
        kept = (await http.get("/v1/rejected")).json()["items"]
        assert [k["source"] for k in kept] == ["prometheus", "alertmanager", "alertmanager"]
        assert kept[2]["body"] == "{not json"
        assert (await http.get("/v1/alerts")).json()["items"] == []
        # Without a token: refused before anything is read.
        r = await http.post("/api/v2/alerts", json=[], headers={"Authorization": ""})
        assert r.status_code == 401


async def test_an_ha_pair_of_prometheus_with_its_own_start_times_is_one_alert(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    messenger = Messenger()
    async with serve(messenger.app()) as url:
        cfg = write_config(tmp_path, simple_config(url))
        async with alerts_app(alerts_settings(make_settings, cfg), tenants.admin) as (_, http):
            alert = {"labels": {"alertname": "OSDDown", "instance": "osd-1"}, "endsAt": "2099-01-01T00:00:00Z"}
            a = {**alert, "startsAt": "2026-12-03T10:00:15Z"}  # replica A evaluated first
            b = {**alert, "startsAt": "2026-12-03T10:00:40Z"}  # replica B, 25 s later
            for body in ([a], [b], [a], [b]):
                assert (await http.post("/api/v2/alerts", json=body)).status_code == 200
            await eventually(lambda: len(messenger.received), lambda n: n >= 1, what="the alert told")
            await asyncio.sleep(0.8)  # a group_interval: a second message would have come
            assert len(messenger.received) == 1
            [stored] = (await http.get("/v1/alerts")).json()["items"]
            assert stored["starts_at"].startswith("2026-12-03T10:00:15")  # the episode's start: the earlier
            metrics = (await http.get("/metrics")).text
            assert 'berth_alerts_received_total{outcome="duplicate",source="prometheus"} 3.0' in metrics


async def test_a_shared_ingest_transaction_stores_what_its_requests_would_one_by_one(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    """The committer's batches: each request judged against what the earlier ones left."""
    cfg = write_config(tmp_path, simple_config("http://127.0.0.1:9"))
    async with alerts_app(alerts_settings(make_settings, cfg), tenants.admin) as (app, _):
        svc: AlertsService = app.state.alerts
        t0 = datetime.now(UTC).replace(microsecond=0)

        def at(s: int) -> datetime:
            return t0 + timedelta(seconds=s)

        def requests(copy: str) -> list[tuple[list[Alert], datetime]]:
            def a(name: str, status: str, starts: int, ends: int, note: str = "") -> Alert:
                labels = {"alertname": name, "copy": copy, "severity": "warning"}
                return Alert(labels, {"n": note}, status, at(starts), at(ends), "prometheus")  # type: ignore[arg-type]

            return [
                ([a("X", "firing", -60, 300), a("Y", "firing", -60, 300)], at(1)),
                ([a("X", "firing", -90, 310, "twin")], at(2)),  # the HA twin: earlier start, later end
                ([a("X", "firing", -90, 310, "twin"), a("Y", "resolved", -60, 3)], at(3)),
                ([a("X", "firing", -60, 320, "again")], at(4)),
            ]

        async with svc.db.transaction() as s:
            batched = await ingest_many(s, svc.routing, requests("batch"))
        one_by_one = []
        for alerts, when in requests("single"):
            async with svc.db.transaction() as s:
                one_by_one.append(await ingest(s, svc.routing, alerts, when))
        assert batched == one_by_one
        assert [(r.new, r.changed, r.duplicate) for r in batched] == [(2, 0, 0), (0, 0, 1), (0, 1, 1), (0, 0, 1)]

        m_ = t.group_members.c
        async with svc.db.sessions() as s:
            rows = (await s.execute(select(t.alerts))).all()
            members = (await s.execute(select(m_.fingerprint, m_.pending))).all()
        stored = {
            (r.labels["copy"], r.labels["alertname"]): (
                r.status,
                r.starts_at,
                r.ends_at,
                r.annotations,
                r.changed_at,
                r.updated_at,
            )
            for r in rows
        }
        for name in ("X", "Y"):
            assert stored[("batch", name)] == stored[("single", name)]
        assert stored[("batch", "X")] == ("firing", at(-90), at(320), {"n": "again"}, at(1), at(4))
        assert stored[("batch", "Y")][0] == "resolved" and stored[("batch", "Y")][4] == at(3)
        assert len(members) == 4 and all(p for _, p in members)

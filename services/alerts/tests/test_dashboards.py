"""Dashboard sync against a fake Grafana (a real HTTP server speaking its Dashboard API).
(Berth's own dashboards against the services' live /metrics: tests/test_dashboard_metrics.py.)"""

from __future__ import annotations

from pathlib import Path

from alerts_fakes import FakeGrafana, serve
from alerts_harness import alerts_app, alerts_settings, simple_config, write_config

from berth_alerts.dashboards import load_templates
from berth_testing import MakeSettings, Tenants


async def test_sync_creates_skips_repairs_drift_and_explains_errors(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    grafana = FakeGrafana()
    async with serve(grafana.app()) as url:
        settings = alerts_settings(make_settings, write_config(tmp_path, simple_config("http://127.0.0.1:9")))
        async with alerts_app(settings, tenants.admin) as (_, http):
            body = {
                "url": url,
                "token": grafana.token,
                "folder_uid": "berth",
                "folder_title": "Berth",
                "variables": {"datasource": "prom-eu-1"},
            }
            r = await http.put("/v1/grafana/instances/eu-1", json=body)
            assert r.status_code == 200 and "token" not in r.json()
            assert (
                await http.put(
                    "/v1/grafana/instances/eu-1", json=body, headers={"Authorization": f"Bearer {tenants.a}"}
                )
            ).status_code == 403

            async def sync() -> dict[str, str]:
                r = await http.post("/v1/dashboards/sync")
                assert r.status_code == 200, r.text
                return {i["uid"]: i["outcome"] for i in r.json()["items"]}

            uids = set(load_templates())
            assert await sync() == dict.fromkeys(uids, "created")
            assert grafana.folders["berth"]["title"] == "Berth"
            pushed = grafana.posts[0]
            assert pushed["folderUid"] == "berth" and pushed["overwrite"] is True
            assert '"uid": "prom-eu-1"' in str(pushed["dashboard"]).replace("'", '"')
            posts = len(grafana.posts)
            assert await sync() == dict.fromkeys(uids, "unchanged")
            assert len(grafana.posts) == posts, "an unchanged dashboard was pushed again"

            grafana.edit_by_hand("berth-alert-flow")
            outcomes = await sync()
            assert outcomes["berth-alert-flow"] == "drift_repaired"
            assert grafana.dashboards["berth-alert-flow"]["dashboard"]["title"] == "Berth / Alert flow"
            status = {(s["instance"], s["uid"]): s for s in (await http.get("/v1/dashboards")).json()["instances"]}
            assert "changed in Grafana" in status[("eu-1", "berth-alert-flow")]["message"]

            # A template changed in the repository (new variables): pushed, not skipped.
            await http.put("/v1/grafana/instances/eu-1", json={**body, "variables": {"datasource": "prom-2"}})
            assert set((await sync()).values()) == {"updated"}

            # 401, 403, 412: clear messages, per instance.
            await http.put("/v1/grafana/instances/bad", json={**body, "token": "wrong"})
            await http.put(
                "/v1/grafana/instances/viewer", json={**body, "token": grafana.readonly_token, "folder_uid": "other"}
            )
            r = await http.post("/v1/dashboards/sync", params={"instance": "bad"})
            assert {i["outcome"] for i in r.json()["items"]} == {"error"}
            assert "refused the service-account token (401" in r.json()["items"][0]["message"]
            r = await http.post("/v1/dashboards/sync", params={"instance": "viewer"})
            assert "403 Forbidden" in r.json()["items"][0]["message"]
            assert "Editor" in r.json()["items"][0]["message"]
            grafana.dashboards["someone-else"] = {
                "dashboard": {"uid": "someone-else", "title": "Berth / Operations", "version": 1},
                "folderUid": "berth",
            }
            grafana.edit_by_hand("berth-operations")  # so the sync pushes it, and meets the title clash
            r = await http.post("/v1/dashboards/sync", params={"instance": "eu-1"})
            errors = {i["uid"]: i["message"] for i in r.json()["items"] if i["outcome"] == "error"}
            assert list(errors) == ["berth-operations"] and "412 Precondition Failed" in errors["berth-operations"]
            assert (await http.post("/v1/dashboards/sync", params={"instance": "nope"})).status_code == 404

"""Two watchers as real processes on one database: the second one started stands by while
the first leads; the leader killed (SIGKILL) in the middle of a quarantine, after the
backend moved the object and before it was recorded. The standby takes over once the lease
lapses: the dead leader's run is recorded partial, the half-done quarantine is finished
(not done again: one entry, one event), and the next run completes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from berth_procs import ServiceProcess, stream_events

from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.backends import build_backend
from berth_shared.natsserver import NatsServer
from berth_testing import MakeSettings, Tenants, eventually, running

CRASH = "watcher.quarantine.after_backend"
ENV = {
    "BERTH_QOS_INTERVAL_S": "3600",
    "BERTH_ORPHANS_INTERVAL_S": "3600",
    "BERTH_RECLAIM_INTERVAL_S": "3600",
    "BERTH_USAGE_INTERVAL_S": "3600",
    "BERTH_GRACE_BACKEND_ORPHAN_S": "0",
    "BERTH_ACTION_BACKEND_ORPHAN": "quarantine",
    "BERTH_LEASE_TTL_S": "2",
    "BERTH_TICK_S": "0.1",
}


async def leads(proc: ServiceProcess) -> bool:
    async with httpx.AsyncClient(base_url=proc.base_url) as http:
        return "berth_watcher_leader 1.0" in (await http.get("/metrics")).text


async def test_leader_killed_mid_quarantine_the_standby_finishes_it_once(
    service_process: Callable[..., ServiceProcess],
    make_settings: MakeSettings,
    tenants: Tenants,
    nats_server: NatsServer,
    tmp_path: Path,
    db_url: str | None,
) -> None:
    prov_settings = make_settings(ProvisionerSettings)
    att_settings = make_settings(AttacherSettings)
    assert isinstance(att_settings, AttacherSettings)
    async with running(provisioner_app(prov_settings)), running(attacher_app(att_settings)):
        shared = {
            "data_dir": tmp_path / "watchers",  # one SQLite file for both, or one PostgreSQL schema
            "db_schema": f"watcher_{uuid.uuid4().hex[:10]}" if db_url else None,
            "extra_env": ENV,
        }
        first, second = service_process("watcher", **shared), service_process("watcher", **shared)
        first.start(crash_at=CRASH)
        await first.wait_ready()
        await eventually(lambda: leads(first), what="the first watcher leads")
        second.start()
        await second.wait_ready()
        async with first.client(tenants.admin) as a, second.client(tenants.admin, timeout=60) as b:
            # The first's start-up runs are over (and found nothing); the second stands by.
            await eventually(
                lambda: a.get("/v1/runs", params={"job": "orphans"}),
                lambda r: [x["status"] for x in r.json()["items"]] == ["complete"],
                what="the first orphans run",
            )
            assert not await leads(second)

            root = (prov_settings.data_dir / "clusters" / "local").resolve()
            leaked = f"vol-{uuid.uuid4().hex}"
            await build_backend("file", {"root": str(root)}).create_volume(leaked, 1 << 30)
            # Asked of the standby, run by the leader, which dies half-way through its quarantine.
            r = await b.post("/v1/runs", json={"job": "orphans"})
            assert r.status_code == 200 and r.json()["status"] == "queued", r.text
            killed_run = r.json()["id"]
            assert await first.wait_exit() == -9
            assert (root / "trash" / "volumes" / f"{leaked}.img").exists(), "the backend had moved it"

            await eventually(lambda: leads(second), within=30, what="the standby takes over")
            r = await eventually(
                lambda: b.get(f"/v1/runs/{killed_run}"), lambda r: r.json()["status"] == "partial", what="marked"
            )
            assert "interrupted" in r.json()["sources"][0]["error"]
            dead_owner = r.json()["owner"]

            r = await b.post("/v1/runs", json={"job": "orphans", "wait_s": 30})
            run = r.json()
            assert run["status"] == "complete" and run["owner"] != dead_owner, run
            assert [(x["kind"], x["outcome"]) for x in run["actions"]] == [("resume quarantining", "done")]
            [entry] = (await b.get("/v1/quarantine")).json()["items"]
            assert (entry["object_id"], entry["state"]) == (leaked, "quarantined")
            assert not (root / "volumes" / f"{leaked}.img").exists()

            async def created() -> list[dict[str, Any]]:
                # The session's stream holds other tests' events too: this object's only.
                found = await stream_events(nats_server.url, "berth.events.*.quarantine.created")
                return [e for e in found if e["event"]["data"]["object_id"] == leaked]

            first_events = await eventually(created, lambda found: len(found) >= 1, what="the quarantine event")
            run = (await b.post("/v1/runs", json={"job": "orphans", "wait_s": 30})).json()
            assert run["status"] == "complete" and run["actions"] == [], "nothing left to do, nothing done twice"
            # The outbox sends in order: once this run's own event is out, so would be any of its actions'.
            await eventually(
                lambda: stream_events(nats_server.url, "berth.events._system.watcher_run.finished"),
                lambda found: run["id"] in {e["event"]["data"]["id"] for e in found},
                what="the last run's event",
            )
            assert len(first_events) == len(await created()) == 1

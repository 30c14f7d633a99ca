"""Berth's own events by severity, silences through the API, inhibition, two replicas."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import nats
from alerts_fakes import Messenger, serve
from alerts_harness import (
    FAST,
    alerts_app,
    alerts_settings,
    am_alert,
    am_webhook,
    simple_config,
    webhook,
    write_config,
)

from berth_alerts.config import AlertsSettings
from berth_shared.bus import CloudEvent, event_subject
from berth_shared.natsserver import NatsServer
from berth_testing import MakeSettings, Tenants, eventually


def by_severity(url: str) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "info",
            "group_by": ["alertname", "cluster"],
            **FAST,
            "routes": [
                {"matchers": ['severity="critical"'], "receiver": "critical", "group_wait_s": 0},
                {"matchers": ['severity="warning"'], "receiver": "warning"},
            ],
        },
        "receivers": [webhook(n, f"{url}/{n}") for n in ("critical", "warning", "info")],
    }


async def publish(nats_url: str, tenant: str, noun: str, verb: str, data: dict[str, Any], subject: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        ev = CloudEvent(
            source="berth/test", type=f"io.berth.{noun}.{verb}.v1", subject=subject, berthtenant=tenant, data=data
        )
        await nc.jetstream().publish(
            event_subject(tenant, noun, verb), ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.id}
        )
    finally:
        await nc.close()


async def test_bus_events_reach_the_messenger_by_severity(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants, nats_server: NatsServer
) -> None:
    messenger = Messenger()
    async with serve(messenger.app()) as url:
        settings = alerts_settings(make_settings, write_config(tmp_path, by_severity(url)))
        async with alerts_app(settings, tenants.admin):
            node = f"node-{tenants.tenant_a}"
            await publish(nats_server.url, "_system", "node", "fenced", {"node_id": node, "epoch": 1}, node)
            await publish(
                nats_server.url,
                tenants.tenant_a,
                "attachment",
                "released",
                {"volume_id": "vol-1", "node_id": node},
                "att-1",
            )
            await publish(nats_server.url, tenants.tenant_a, "volume", "created", {"id": "vol-1"}, "vol-1")

            def paths() -> dict[str, list[str]]:
                out: dict[str, list[str]] = {}
                for r in messenger.received:
                    for a in r.body["alerts"]:
                        out.setdefault(r.path, []).append(f"{a['labels']['alertname']}:{a['status']}")
                return out

            await eventually(paths, lambda p: len(p) == 3, what="one message per severity")
            assert paths() == {
                "/critical": ["NodeFenced:firing"],
                "/warning": ["VolumeFailover:firing"],
                "/info": ["VolumeCreated:firing"],
            }
            # The unfence resolves the fence alert: told as resolved on the critical receiver.
            await publish(nats_server.url, "_system", "node", "unfenced", {"node_id": node, "epoch": 1}, node)
            await eventually(paths, lambda p: p["/critical"] == ["NodeFenced:firing", "NodeFenced:resolved"])


async def test_silences_and_inhibition(tmp_path: Path, make_settings: MakeSettings, tenants: Tenants) -> None:
    messenger = Messenger()
    async with serve(messenger.app()) as url:
        settings = alerts_settings(make_settings, write_config(tmp_path, by_severity(url)))
        async with alerts_app(settings, tenants.admin) as (_, http):
            bad = await http.post(
                "/v1/silences", json={"matchers": ['alertname=~".*"'], "duration_s": 60, "comment": "everything"}
            )
            assert bad.status_code == 400 and bad.json()["reason"] == "invalid_matcher"
            r = await http.post(
                "/v1/silences",
                json={"matchers": ['alertname="Maintenance"'], "duration_s": 600, "comment": "planned work"},
            )
            assert r.status_code == 201, r.text
            silence = r.json()
            assert silence["state"] == "active"
            await http.post(
                "/v1/ingest/alertmanager",
                json=am_webhook(
                    am_alert("Maintenance", severity="critical", cluster="c1"),
                    am_alert("ClusterDown", severity="critical", cluster="c1"),
                    am_alert("VolumeSlow", severity="warning", cluster="c1", volume="vol-1"),
                    am_alert("VolumeSlow", severity="warning", cluster="c2", volume="vol-2"),
                ),
            )

            def told() -> set[str]:
                # (Events other tests left in the session's stream arrive too: not counted.)
                return {
                    f"{a['labels']['alertname']}/{a['labels'].get('cluster')}"
                    for a in messenger.alerts_seen()
                    if a["labels"].get("source") != "berth"
                }

            await eventually(told, lambda s: {"ClusterDown/c1", "VolumeSlow/c2"} <= s)
            await asyncio.sleep(0.6)  # a group_interval: nothing more may come
            assert told() == {"ClusterDown/c1", "VolumeSlow/c2"}  # silenced, and c1's volume inhibited
            # The silence ends: what it held back is told.
            assert (await http.delete(f"/v1/silences/{silence['id']}")).json()["state"] == "expired"
            await eventually(told, lambda s: "Maintenance/c1" in s)
            # The cluster comes back: its volume alert, still firing, is told.
            await http.post(
                "/v1/ingest/alertmanager",
                json=am_webhook(am_alert("ClusterDown", "resolved", severity="critical", cluster="c1")),
            )
            await eventually(told, lambda s: "VolumeSlow/c1" in s)
            listed = (await http.get("/v1/silences", params={"include_expired": True})).json()["items"]
            assert [s_["id"] for s_ in listed] == [silence["id"]]


def two_replicas(
    tmp_path: Path, make_settings: MakeSettings, cfg: Path, **kw: Any
) -> tuple[AlertsSettings, AlertsSettings]:
    """Two replicas' settings: the same database (on SQLite: the same file), each its own
    data directory and so its own replica id."""
    one = alerts_settings(make_settings, cfg, data_dir=tmp_path / "a", **kw)
    two = alerts_settings(
        make_settings, cfg, data_dir=tmp_path / "b", db_schema=one.db_schema, database_url=one.db_url, **kw
    )
    return one, two


async def test_two_replicas_deliver_once_between_them(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants, nats_server: NatsServer
) -> None:
    messenger = Messenger()
    async with serve(messenger.app()) as url:
        one, two = two_replicas(tmp_path, make_settings, write_config(tmp_path, by_severity(url)))
        async with contextlib.AsyncExitStack() as stack:
            _, a = await stack.enter_async_context(alerts_app(one, tenants.admin))
            _, b = await stack.enter_async_context(alerts_app(two, tenants.admin))
            # An HA pair of Alertmanagers, each posting to a different replica, several times.
            batches = [
                am_webhook(
                    *(am_alert(f"Disk{g}", severity="warning", cluster="c1", instance=f"i{i}") for i in range(10))
                )
                for g in range(5)
            ]
            await asyncio.gather(*(c.post("/v1/ingest/alertmanager", json=bt) for bt in batches for c in (a, b, a)))
            for i in range(20):  # events: one consumer group, each event to one replica
                await publish(nats_server.url, tenants.tenant_a, "volume", "created", {"id": f"v{i}"}, f"v{i}")

            def ours() -> list[str]:
                return [
                    a["fingerprint"]
                    for a in messenger.alerts_seen()
                    if a["labels"].get("tenant") in (None, tenants.tenant_a)
                ]

            await eventually(lambda: len(ours()), lambda n: n >= 70, what="every alert told")
            await asyncio.sleep(1.0)
            keys = [r.headers["berth-notification-key"] for r in messenger.received]
            assert len(keys) == len(set(keys)), "a notification delivered twice"
            assert len(ours()) == len(set(ours())) == 70


async def test_a_claim_near_its_end_is_given_back_not_sent_so_no_other_replica_sends_it_too(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants, nats_server: NatsServer
) -> None:
    # Claims of 2 s, a messenger taking 1.5 s per message, one message at a time: of three
    # groups flushed together on replica a, two wait in a's memory past half their claim.
    # Sent from there, they would go out under claims that run out mid-send, and replica b
    # would take them over and send them as well.
    messenger = Messenger(delay_s=1.5)
    async with serve(messenger.app()) as url:
        cfg = write_config(tmp_path, simple_config(url, {"max_in_flight": 1}))
        one, two = two_replicas(tmp_path, make_settings, cfg, delivery_claim_s=2.0)
        async with contextlib.AsyncExitStack() as stack:
            _, a = await stack.enter_async_context(alerts_app(one, tenants.admin))
            await stack.enter_async_context(alerts_app(two, tenants.admin))
            body = am_webhook(*(am_alert(name) for name in ("Cpu", "Disk", "Net")))
            assert (await a.post("/v1/ingest/alertmanager", json=body)).status_code == 200
            await eventually(lambda: len(messenger.received), lambda n: n >= 3, within=15, what="all three sent")
            await asyncio.sleep(2.5)  # past every claim: a copy sent late would have arrived
            keys = [r.headers["berth-notification-key"] for r in messenger.received]
            assert len(keys) == 3 == len(set(keys)), f"a notification delivered twice: {keys}"

"""Delivery against a messenger that fails, throttles, refuses large bodies and recovers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from sqlalchemy import select, update

from berth_alerts import tables as t
from berth_testing import MakeSettings, Tenants, eventually


def above(k: int) -> Callable[[int], bool]:
    """A count's condition: more than `k` (taken now, not when the condition runs)."""
    return lambda n: n > k


async def test_failures_429_retry_after_and_413_lose_nothing(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    messenger = Messenger(max_body=3000, fail_next=2, throttle_next=1, retry_after_s=1)
    async with serve(messenger.app()) as url:
        cfg = write_config(
            tmp_path,
            {
                "route": {"receiver": "chat", "group_by": ["alertname"], **FAST},
                # Configured limit above the messenger's real one: the 413s teach it.
                "receivers": [webhook("chat", url + "/slack", type="slack", max_message_bytes=8000)],
            },
        )
        async with alerts_app(alerts_settings(make_settings, cfg), tenants.admin) as (_, http):
            alerts = [am_alert("Latency", instance=f"node-{i:02}") for i in range(30)]
            for a in alerts:
                a["annotations"]["summary"] = f"p99 over target on {a['labels']['instance']} " + "." * 150
            assert (await http.post("/v1/ingest/alertmanager", json=am_webhook(*alerts))).status_code == 200

            def seen() -> list[str]:
                return re.findall(r"node-\d\d", "\n".join(messenger.texts()))

            await eventually(lambda: len(seen()), lambda n: n >= 30, within=20, what="all 30 alerts told")
            assert sorted(seen()) == sorted(f"node-{i:02}" for i in range(30))  # each exactly once
            statuses = [s for s, _ in messenger.refused]
            assert statuses[:3] == [429, 500, 500] and 413 in statuses
            assert all(r.size <= 3000 for r in messenger.received)
            # Retry-After: nothing reached the messenger within its second after the 429.
            assert messenger.received[0].at - messenger.throttled_at[0] >= 0.95

            async def notes() -> list[dict[str, object]]:
                return list((await http.get("/v1/notifications")).json()["items"])

            [note] = await eventually(notes, lambda n: n[0]["state"] == "delivered", what="recorded as delivered")
            assert isinstance(note["attempts"], int) and note["attempts"] >= 3
            metrics = (await http.get("/metrics")).text
            assert 'berth_alerts_delivery_attempts_total{receiver="chat",result="throttled"} 1.0' in metrics
            assert 'berth_alerts_notifications_total{outcome="delivered",receiver="chat"} 1.0' in metrics


async def test_outage_backlog_collapses_to_the_latest_state(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    messenger = Messenger(down=True)
    async with serve(messenger.app()) as url:
        cfg = write_config(
            tmp_path,
            {
                "route": {"receiver": "hook", "group_by": ["alertname"], **FAST},
                "receivers": [webhook("hook", url + "/hook", backoff_initial_s=0.3, backoff_max_s=0.3)],
            },
        )
        async with alerts_app(alerts_settings(make_settings, cfg), tenants.admin) as (_, http):
            # Three changes of one group while the messenger is down: a, then b, then a resolved.
            for body in (
                am_webhook(am_alert("Db", instance="a")),
                am_webhook(am_alert("Db", instance="b")),
                am_webhook(am_alert("Db", "resolved", instance="a")),
            ):
                await http.post("/v1/ingest/alertmanager", json=body)
                await eventually(lambda: len(messenger.refused), above(len(messenger.refused)))
                await asyncio.sleep(0.5)  # the group_interval: each change is a notification of its own
            notes = (await http.get("/v1/notifications")).json()["items"]
            assert len(notes) >= 2
            messenger.down = False
            start = time.monotonic()
            await eventually(lambda: len(messenger.received), lambda n: n >= 1, what="backlog delivered")
            await asyncio.sleep(0.6)
            assert len(messenger.received) == 1, "one message for the whole backlog"
            assert time.monotonic() - start < 5
            told = {a["labels"]["instance"]: a["status"] for a in messenger.received[0].body["alerts"]}
            assert told == {"a": "resolved", "b": "firing"}
            states = [n["state"] for n in (await http.get("/v1/notifications")).json()["items"]]
            assert states.count("delivered") == 1 and states.count("collapsed") == len(states) - 1


async def test_the_delivery_history_is_pruned_and_the_queue_is_not(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    messenger = Messenger()
    async with serve(messenger.app()) as url:
        cfg = write_config(
            tmp_path,
            {"route": {"receiver": "chat", "group_by": ["alertname"], **FAST}, "receivers": [webhook("chat", url)]},
        )
        settings = alerts_settings(make_settings, cfg).model_copy(update={"delivery_history_s": 3600.0})
        async with alerts_app(settings, tenants.admin) as (app, http):
            svc = app.state.alerts

            async def notes() -> list[dict[str, Any]]:
                return list((await http.get("/v1/notifications")).json()["items"])

            def delivered(count: int) -> Callable[[list[dict[str, Any]]], bool]:
                return lambda n: len(n) == count and all(x["state"] == "delivered" for x in n)

            for count, name in enumerate(("Old", "Recent"), start=1):
                assert (await http.post("/v1/ingest/alertmanager", json=am_webhook(am_alert(name)))).status_code == 200
                await eventually(notes, delivered(count), what=f"{name} delivered")
            d = t.deliveries.c
            old_at = datetime.now(UTC) - timedelta(hours=2)
            async with svc.db.transaction() as s:
                ids = list((await s.execute(select(d.id).order_by(d.id))).scalars())
                await s.execute(update(t.deliveries).where(d.id == ids[0]).values(finished_at=old_at))
                # Queued long ago and not finished (a messenger down for hours): never pruned.
                await s.execute(
                    t.deliveries.insert().values(
                        dedup_key="q" * 64,
                        group_id="g" * 32,
                        receiver="nobody",
                        state="pending",
                        status="firing",
                        kind="first",
                        payload={"alerts": []},
                        alert_count=0,
                        next_attempt_at=datetime.now(UTC) + timedelta(days=1),
                        oldest_change_at=old_at,
                        created_at=old_at,
                        finished_at=old_at,
                    )
                )

            assert await svc.prune_history() == 1
            async with svc.db.sessions() as s:
                left = {r.id: r.state for r in (await s.execute(select(d.id, d.state)))}
            assert ids[0] not in left and left[ids[1]] == "delivered"
            assert sorted(left.values()) == ["delivered", "pending"]
            assert await svc.prune_history() == 0


async def test_a_group_tells_in_order_while_its_previous_message_is_still_being_sent(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    # The messenger takes longer to answer than the group_interval: the group's next
    # notifications are flushed while the one before is still in flight.
    messenger = Messenger(delay_s=1.2)
    async with serve(messenger.app()) as url:
        cfg = write_config(tmp_path, simple_config(url, {"max_in_flight": 8}))
        async with alerts_app(alerts_settings(make_settings, cfg), tenants.admin) as (_, http):
            for body in (
                am_webhook(am_alert("Db", instance="a")),
                am_webhook(am_alert("Db", instance="b")),
                am_webhook(am_alert("Db", "resolved", instance="a")),
            ):
                await http.post("/v1/ingest/alertmanager", json=body)
                await asyncio.sleep(0.6)  # past the group_interval: each change is flushed on its own

            async def notes() -> list[dict[str, Any]]:
                return list((await http.get("/v1/notifications")).json()["items"])

            await eventually(
                notes,
                lambda n: len(n) >= 2 and all(x["state"] in ("delivered", "collapsed") for x in n),
                within=20,
                what="every notification finished",
            )
            assert messenger.most_answering == 1, "one group's messages went out one at a time"
            told: dict[str, str] = {}
            for a in messenger.alerts_seen("/hook"):  # in arrival order: the last word counts
                told[a["labels"]["instance"]] = a["status"]
            assert told == {"a": "resolved", "b": "firing"}
            assert messenger.alerts_seen("/hook")[0]["labels"]["instance"] == "a"


async def test_a_stop_gives_back_what_it_claimed_and_did_not_send(
    tmp_path: Path, make_settings: MakeSettings, tenants: Tenants
) -> None:
    messenger = Messenger(delay_s=1.0)
    async with serve(messenger.app()) as url:
        cfg = write_config(tmp_path, simple_config(url, {"max_in_flight": 1}))
        settings = alerts_settings(make_settings, cfg)
        async with alerts_app(settings, tenants.admin) as (app, http):
            # Three groups flushed together; one slot: two wait, claimed, in the worker.
            body = am_webhook(*(am_alert(name) for name in ("Cpu", "Disk", "Net")))
            assert (await http.post("/v1/ingest/alertmanager", json=body)).status_code == 200
            await eventually(lambda: len(messenger.received), lambda n: n == 1, what="the first on its way")
            db = app.state.alerts.db
        d = t.deliveries.c
        async with db.sessions() as s:
            rows = (await s.execute(select(d.state, d.claimed_by, d.claim_until))).all()
        # The one in flight was answered before the stop ended; the others are free to
        # anyone at once (no claim left to run out first).
        assert sorted(r.state for r in rows) == ["delivered", "pending", "pending"]
        assert all(r.claimed_by is None or r.claim_until is None for r in rows if r.state == "pending")
        messenger.delay_s = 0
        async with alerts_app(settings, tenants.admin):
            await eventually(lambda: len(messenger.received), lambda n: n == 3, within=5, what="the rest sent")
        assert sorted(a["labels"]["alertname"] for a in messenger.alerts_seen()) == ["Cpu", "Disk", "Net"]

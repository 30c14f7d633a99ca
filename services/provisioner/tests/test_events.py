"""Events: every state change is a CloudEvent on berth.events.<tenant>.<noun>.<verb>, relayed
from the outbox; nothing for rejected requests or replays; a tenant sees only its own.

"Nothing else was emitted" is proven without sleeping: after the requests under test, a
barrier action emits one more event on the same subjects; once it arrives, everything
committed before it has been relayed (the relay publishes in outbox order).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import DeliverPolicy
from opentelemetry import trace
from provisioner_checks import VOLUMES, EventTap, create_volume, db_state, service, set_quota
from provisioner_harness import Provisioner
from sqlalchemy import update

from berth_shared.bus import CloudEvent
from berth_shared.errors import BerthError
from berth_shared.messages.provisioner import EVENTS
from berth_testing import eventually

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def _subject(tenant: str) -> str:
    return f"berth.events.{tenant}.>"


def check_envelope(tap: EventTap, index: int, tenant: str, noun: str, verb: str, resource_id: str) -> dict[str, Any]:
    """One relayed message, checked field by field; returns its `data`."""
    msg = tap.msgs[index]
    event = CloudEvent.model_validate_json(msg.data)
    assert msg.subject == f"berth.events.{tenant}.{noun}.{verb}"
    assert event.specversion == "1.0"
    assert event.type == f"io.berth.{noun}.{verb}.v1"
    assert event.source == "berth/provisioner"
    assert event.subject == resource_id
    assert event.berthtenant == tenant
    assert event.datacontenttype == "application/json"
    assert isinstance(event.time, datetime) and event.time.tzinfo is not None
    uuid.UUID(event.id)
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == event.id, "JetStream dedups by event id"
    # The payload is the documented model for this event type.
    EVENTS[(noun, verb)].model_validate(event.data)
    return dict(event.data)


async def test_volume_lifecycle_events(prov: Provisioner) -> None:
    ta = prov.tenants.tenant_a
    h = prov.auth(prov.tenants.a)
    async with EventTap(prov.bus.nc, _subject(ta)) as tap:
        vol = await create_volume(prov, prov.tenants.a, "evented", 1)
        r = await prov.http.post(f"{VOLUMES}/{vol['id']}/expand", json={"size_gib": 2}, headers=h)
        assert r.status_code == 200
        snap = (await prov.http.post("/v1/snapshots", json={"name": "s", "volume_id": vol["id"]}, headers=h)).json()
        restored = await create_volume(prov, prov.tenants.a, "restored", 2, source_snapshot_id=snap["id"])
        assert (await prov.http.delete(f"/v1/snapshots/{snap['id']}", headers=h)).status_code == 204
        assert (await prov.http.delete(f"{VOLUMES}/{vol['id']}", headers=h)).status_code == 204
        await tap.wait_count(6)

    expected = [
        ("volume", "created", vol["id"]),
        ("volume", "expanded", vol["id"]),
        ("snapshot", "created", snap["id"]),
        ("volume", "created", restored["id"]),
        ("snapshot", "deleted", snap["id"]),
        ("volume", "deleted", vol["id"]),
    ]
    assert len(tap.msgs) == len(expected), tap.types()
    data = [check_envelope(tap, i, ta, *e) for i, e in enumerate(expected)]
    assert (data[0]["status"], data[0]["size_gib"], data[0]["name"]) == ("available", 1, "evented")
    assert (data[1]["status"], data[1]["size_gib"]) == ("available", 2)
    assert (data[2]["volume_id"], data[2]["status"]) == (vol["id"], "available")
    assert data[3]["source_snapshot_id"] == snap["id"]
    assert data[5]["id"] == vol["id"] and data[5]["tenant"] == ta
    assert len({e["id"] for e in tap.events}) == len(expected), "every event has its own id"


async def test_bus_commands_emit_the_same_events_with_the_callers_trace(prov: Provisioner) -> None:
    ta = prov.tenants.tenant_a
    async with EventTap(prov.bus.nc, _subject(ta)) as tap:
        with trace.get_tracer("test").start_as_current_span("caller") as span:
            vol = await prov.bus.request(
                "berth.provisioner.volume.create",
                {"name": "via-bus", "size_gib": 1, "volume_type": "standard"},
                token=prov.tenants.a,
            )
        await tap.wait_count(1)
    data = check_envelope(tap, 0, ta, "volume", "created", vol["id"])
    assert data["id"] == vol["id"]
    traceparent = tap.events[0]["traceparent"]
    match = TRACEPARENT.fullmatch(traceparent or "")
    assert match, traceparent
    assert match.group(1) == format(span.get_span_context().trace_id, "032x"), "one trace from caller to event"


async def test_quota_and_cluster_events(prov: Provisioner, tmp_path: Path) -> None:
    ta = prov.tenants.tenant_a
    async with (
        EventTap(prov.bus.nc, _subject(ta)) as tenant_tap,
        EventTap(prov.bus.nc, "berth.events._system.cluster.>") as system_tap,
    ):
        quota = await set_quota(prov, ta, 7, 70)
        await tenant_tap.wait_count(1)
        data = check_envelope(tenant_tap, 0, ta, "quota", "updated", ta)
        assert data == quota

        r = await prov.http.post(
            "/v1/clusters",
            json={
                "name": "c2",
                "config": {"root": str(tmp_path / "c2")},
                "volume_types": ["standard"],
                "capacity_gib": 5,
            },
            headers=prov.auth(prov.tenants.admin),
        )
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        admin = prov.auth(prov.tenants.admin)
        # An empty patch changes nothing and emits nothing; the draining one does.
        assert (await prov.http.patch(f"/v1/clusters/{cid}", json={}, headers=admin)).status_code == 200
        assert (
            await prov.http.patch(f"/v1/clusters/{cid}", json={"state": "draining"}, headers=admin)
        ).status_code == 200

        def mine(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in evs if e["subject"] == cid]  # _system is shared by every test

        await system_tap.wait_for(lambda evs: len(mine(evs)) >= 2)
    ours = [i for i, e in enumerate(system_tap.events) if e["subject"] == cid]
    assert len(ours) == 2, mine(system_tap.events)
    registered = check_envelope(system_tap, ours[0], "_system", "cluster", "registered", cid)
    updated = check_envelope(system_tap, ours[1], "_system", "cluster", "updated", cid)
    assert registered["state"] == "active" and updated["state"] == "draining"
    assert "config" not in registered, "backend config stays private"


async def test_rejected_requests_and_replays_emit_nothing(prov: Provisioner) -> None:
    ta = prov.tenants.tenant_a
    h = prov.auth(prov.tenants.a)
    async with EventTap(prov.bus.nc, _subject(ta)) as tap:
        vol = await create_volume(prov, prov.tenants.a, "exists", 1)
        foreign = await create_volume(prov, prov.tenants.b, "foreign", 1)
        await set_quota(prov, ta, 1, 10)
        setup = len(await tap.wait_count(2))  # the create and the quota change
        rejected = [
            ("POST", VOLUMES, {"name": "q", "size_gib": 1, "volume_type": "standard"}),  # quota
            ("POST", VOLUMES, {"name": "exists", "size_gib": 1, "volume_type": "gold"}),  # different spec
            ("POST", VOLUMES, {"name": "z", "size_gib": 0, "volume_type": "standard"}),  # invalid
            ("POST", f"{VOLUMES}/{vol['id']}/expand", {"size_gib": 20}),  # gigabyte quota
            ("POST", f"{VOLUMES}/{vol['id']}/expand", {"size_gib": 0}),  # invalid
            ("DELETE", f"{VOLUMES}/{foreign['id']}", None),  # another tenant's
            ("POST", "/v1/snapshots", {"name": "s", "volume_id": foreign["id"]}),  # another tenant's
        ]
        for method, url, body in rejected:
            r = await prov.http.request(method, url, json=body, headers=h)
            assert 400 <= r.status_code < 500, r.text
        with pytest.raises(BerthError):
            await prov.bus.request(
                "berth.provisioner.volume.create",
                {"name": "q", "size_gib": 1, "volume_type": "standard"},
                token=prov.tenants.a,
            )
        # Replays change nothing, so they say nothing.
        again = await create_volume(prov, prov.tenants.a, "exists", 1)
        assert again["id"] == vol["id"]
        r = await prov.http.post(f"{VOLUMES}/{vol['id']}/expand", json={"size_gib": 1}, headers=h)
        assert r.status_code == 200

        barrier = await set_quota(prov, ta, 2, 10)
        events = await tap.wait_count(setup + 1)
    assert [e["type"] for e in events[setup:]] == ["io.berth.quota.updated.v1"], tap.types()
    assert events[setup]["data"] == barrier


async def test_a_tenant_sees_none_of_another_tenants_events(prov: Provisioner) -> None:
    ta, tb = prov.tenants.tenant_a, prov.tenants.tenant_b
    async with EventTap(prov.bus.nc, _subject(ta)) as tap_a, EventTap(prov.bus.nc, _subject(tb)) as tap_b:
        vol_a = await create_volume(prov, prov.tenants.a, "shared-name", 1)
        await prov.http.post(
            "/v1/snapshots", json={"name": "s", "volume_id": vol_a["id"]}, headers=prov.auth(prov.tenants.a)
        )
        vol_b = await create_volume(prov, prov.tenants.b, "shared-name", 1)
        await tap_a.wait_count(2)
        await tap_b.wait_count(1)
        # A's later events would be relayed before B's barrier: wait for it, then compare.
        await create_volume(prov, prov.tenants.a, "later", 1)
        await set_quota(prov, tb, 3, 3)
        await tap_b.wait_count(2)
        await tap_a.wait_count(3)
    assert {e["berthtenant"] for e in tap_a.events} == {ta}
    assert {e["berthtenant"] for e in tap_b.events} == {tb}
    assert [e["subject"] for e in tap_b.events] == [vol_b["id"], tb]
    assert vol_a["id"] not in {e["subject"] for e in tap_b.events}
    assert all(m.subject.startswith(f"berth.events.{tb}.") for m in tap_b.msgs)


async def test_concurrent_creates_emit_one_event_per_volume(prov: Provisioner) -> None:
    ta = prov.tenants.tenant_a
    h = prov.auth(prov.tenants.a)
    await set_quota(prov, ta, 10, 100)
    async with EventTap(prov.bus.nc, f"berth.events.{ta}.volume.>") as tap:
        bodies = [{"name": f"n-{i % 15}", "size_gib": 1, "volume_type": "standard"} for i in range(50)]
        replies = await asyncio.gather(*(prov.http.post(VOLUMES, json=b, headers=h) for b in bodies))
        created = {r.json()["id"] for r in replies if r.status_code == 201}
        assert len(created) == 10
        # Barrier on the same subject filter: a delete of one of them.
        victim = sorted(created)[0]
        assert (await prov.http.delete(f"{VOLUMES}/{victim}", headers=h)).status_code == 204
        await tap.wait_for(lambda evs: any(e["type"] == "io.berth.volume.deleted.v1" for e in evs))
    types = tap.types()
    assert types.count("io.berth.volume.created.v1") == 10 and len(types) == 11, types
    assert {e["subject"] for e in tap.events[:10]} == created


async def test_events_land_in_jetstream_once_even_when_relayed_twice(prov: Provisioner) -> None:
    """A relay that crashed after publishing but before marking rows publishes them again:
    JetStream drops the copies by Nats-Msg-Id, so a consumer of the stream sees each once."""
    ta = prov.tenants.tenant_a
    js = prov.bus.js
    stream = prov.settings.events_stream
    filter_subject = f"berth.events.{ta}.volume.created"
    svc = service(prov)
    assert svc.relay is not None

    async def stored() -> int:  # events kept in the stream under this subject
        info = await js.stream_info(stream, subjects_filter=filter_subject)
        return int((info.state.subjects or {}).get(filter_subject, 0))

    async with EventTap(prov.bus.nc, filter_subject) as tap:
        vol = await create_volume(prov, prov.tenants.a, "once", 1)
        await tap.wait_count(1)
        await eventually(stored)
        # Forget that the row went out, as a crash between publish and commit would.
        async with svc.db.transaction() as s:
            await s.execute(update(svc.tables.outbox).values(published_at=None))
        # Relay now (the background relay may get there first: either way, once).
        await svc.relay.relay_once()
        await tap.wait_count(2)  # a core subscriber sees the raw re-publish ...
    assert tap.events[0]["id"] == tap.events[1]["id"]
    assert await stored() == 1  # ... the stream keeps one copy
    assert (await db_state(prov))["outbox"] == 1

    # An ordered (ephemeral) JetStream consumer reads it back exactly once.
    sub = await js.subscribe(filter_subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        msg = await sub.next_msg(timeout=5)
        event = CloudEvent.model_validate_json(msg.data)
        assert (event.id, event.subject, event.type) == (tap.events[0]["id"], vol["id"], "io.berth.volume.created.v1")
        assert msg.headers and msg.headers["Nats-Msg-Id"] == event.id
        assert msg.metadata.num_pending == 0, "no second copy behind it"
    finally:
        await sub.unsubscribe()

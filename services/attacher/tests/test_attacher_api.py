"""The attacher's API over HTTP and the bus: grants, errors, permissions and events.

Nothing here stages a volume on a node, so the file backend needs no loop devices: a fence
of a node whose volumes are not staged cuts nothing, and these tests run everywhere. The
liveness grace is long (60 s) so that only the calls under test move a node.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from attacher_checks import (
    SYSTEM_EVENTS,
    EventTap,
    assert_problem,
    attachments,
    ev,
    publish,
    register_node,
    state_is,
    uid,
    whole_state,
)
from attacher_harness import Stack, stack

from berth_shared.errors import FailedPrecondition, NotFound, PermissionDenied
from berth_shared.messages.attacher import PREFIX, Attachment, AttachmentList, HeartbeatReply, Node
from berth_testing import MakeSettings, Tenants, eventually


@pytest.fixture
async def st(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> AsyncIterator[Stack]:
    async with stack(make_settings, tenants, tmp_path, dead_after_s=60.0) as s:
        yield s


async def b_volume(st: Stack, name: str) -> dict[str, Any]:
    r = await st.prov.post(
        "/v1/volumes", json={"name": name, "size_gib": 1, "volume_type": "standard"}, headers=st.h(st.tenants.b)
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def fence_node(st: Stack, node_id: str) -> None:
    r = await st.att.post(f"/v1/nodes/{node_id}/down", json={"reason": "test"}, headers=st.h(st.tenants.admin))
    assert r.status_code == 200, r.text
    await eventually(state_is(st, node_id, "fenced"), within=5, what=f"{node_id} fenced")


# -- grants ----------------------------------------------------------------------------------


async def test_publish_and_unpublish_are_idempotent_over_http(st: Stack) -> None:
    vol = await st.volume("idem")
    node = uid("n")
    assert (await register_node(st, node)).status_code == 200
    async with EventTap(st.bus.nc, f"berth.events.{st.tenants.tenant_a}.attachment.>") as tap:
        first = await publish(st, st.tenants.a, vol["id"], node)
        assert first.status_code == 201, first.text
        again = await publish(st, st.tenants.a, vol["id"], node)
        assert again.status_code == 201, again.text
        assert again.json() == first.json()
        att = first.json()
        assert att["state"] == "attached"
        assert att["generation"] == 1
        assert att["tenant"] == st.tenants.tenant_a
        assert att["publish_context"]["generation"] == "1"
        assert att["publish_context"]["path"]
        assert [a["id"] for a in await attachments(st)] == [att["id"]]

        for _ in range(2):
            r = await st.att.delete(
                "/v1/attachments", params={"volume_id": vol["id"], "node_id": node}, headers=st.h(st.tenants.a)
            )
            assert r.status_code == 204, r.text
        assert await attachments(st) == []
        await tap.wait_type(att["id"], ev("attachment", "deleted"))
        # One event per change: the repeats changed nothing and said nothing.
        assert tap.types_about(att["id"]) == [ev("attachment", "created"), ev("attachment", "deleted")]

        # A new grant gets a new generation: generations are never reused.
        third = await publish(st, st.tenants.a, vol["id"], node)
        assert third.status_code == 201
        assert third.json()["generation"] == 2
        assert third.json()["id"] != att["id"]


async def test_publish_and_unpublish_are_idempotent_over_the_bus(st: Stack) -> None:
    vol = await st.volume("idem-bus")
    node, other = uid("n"), uid("m")
    for n in (node, other):
        await register_node(st, n)
    body = {"volume_id": vol["id"], "node_id": node}
    one = await st.bus.request_model(f"{PREFIX}.volume.publish", body, Attachment, token=st.tenants.a)
    two = await st.bus.request_model(f"{PREFIX}.volume.publish", body, Attachment, token=st.tenants.a)
    assert one == two
    with pytest.raises(FailedPrecondition) as conflict:
        await st.bus.request(f"{PREFIX}.volume.publish", {"volume_id": vol["id"], "node_id": other}, token=st.tenants.a)
    assert conflict.value.reason == "published_elsewhere"
    assert conflict.value.extra["holder"] == node
    listed = await st.bus.request_model(
        f"{PREFIX}.attachment.list", {"volume_id": vol["id"]}, AttachmentList, token=st.tenants.a
    )
    assert [a.node_id for a in listed.items] == [node]
    for _ in range(2):
        assert await st.bus.request(f"{PREFIX}.volume.unpublish", body, token=st.tenants.a) == {}
    # The holder detached: the other node gets it at once.
    moved = await st.bus.request_model(
        f"{PREFIX}.volume.publish", {"volume_id": vol["id"], "node_id": other}, Attachment, token=st.tenants.a
    )
    assert moved.node_id == other
    assert moved.generation == one.generation + 1


async def test_second_single_writer_names_the_holder_and_changes_nothing(st: Stack) -> None:
    vol = await st.volume("sw")
    a, b = uid("a"), uid("b")
    for n in (a, b):
        await register_node(st, n)
    assert (await publish(st, st.tenants.a, vol["id"], a)).status_code == 201
    before = await whole_state(st)
    r = await publish(st, st.tenants.a, vol["id"], b)
    body = assert_problem(r, 409, "failed_precondition", "published_elsewhere")
    assert body["holder"] == a
    assert a in body["detail"]
    # The same node asking for another mode: a conflicting repeat, not a new grant.
    r = await publish(st, st.tenants.a, vol["id"], a, access_mode="single_node_writer", readonly=True)
    assert_problem(r, 409, "already_exists", "incompatible_publish")
    assert await whole_state(st) == before


async def test_readonly_and_access_mode_rules(st: Stack) -> None:
    vol = await st.volume("ro")
    nodes = [uid(f"r{i}") for i in range(3)]
    writer = uid("w")
    for n in [*nodes, writer]:
        await register_node(st, n)
    before = await whole_state(st)
    r = await publish(st, st.tenants.a, vol["id"], nodes[0], access_mode="single_node_reader_only")
    assert_problem(r, 400, "invalid_argument", "readonly_required")
    r = await publish(st, st.tenants.a, vol["id"], nodes[0], access_mode="multi_node_reader_only", readonly=False)
    assert_problem(r, 400, "invalid_argument", "readonly_required")
    r = await publish(st, st.tenants.a, vol["id"], nodes[0], access_mode="multi_node_multi_writer")
    body = assert_problem(r, 400, "invalid_argument", "access_mode_unsupported")
    assert "file" in body["detail"]
    r = await publish(st, st.tenants.a, vol["id"], nodes[0], access_mode="no_such_mode")
    assert r.status_code == 422, r.text
    assert await whole_state(st) == before

    # Many readers on many nodes...
    for n in nodes:
        r = await publish(st, st.tenants.a, vol["id"], n, access_mode="multi_node_reader_only", readonly=True)
        assert r.status_code == 201, r.text
        assert r.json()["readonly"] is True
    # ...and no writer beside them, of any mode.
    for mode in ("single_node_writer", "multi_node_single_writer"):
        r = await publish(st, st.tenants.a, vol["id"], writer, access_mode=mode)
        assert assert_problem(r, 409, "failed_precondition", "published_elsewhere")["holder"] in nodes
    assert sorted(a["node_id"] for a in await attachments(st, volume_id=vol["id"])) == sorted(nodes)


async def test_multi_node_single_writer_one_writer_and_readers(st: Stack) -> None:
    vol = await st.volume("mnsw")
    w, r1, r2, w2 = (uid(p) for p in ("w", "r1", "r2", "w2"))
    for n in (w, r1, r2, w2):
        await register_node(st, n)
    mode = "multi_node_single_writer"
    assert (await publish(st, st.tenants.a, vol["id"], w, access_mode=mode)).status_code == 201
    for r in (r1, r2):
        assert (await publish(st, st.tenants.a, vol["id"], r, access_mode=mode, readonly=True)).status_code == 201
    refused = await publish(st, st.tenants.a, vol["id"], w2, access_mode=mode)
    assert assert_problem(refused, 409, "failed_precondition", "published_elsewhere")["holder"] == w


# -- errors and no state change ------------------------------------------------------------


async def test_unknown_node_is_404_node_not_found(st: Stack) -> None:
    vol = await st.volume("un")
    before = await whole_state(st)
    r = await publish(st, st.tenants.a, vol["id"], uid("never-seen"))
    assert_problem(r, 404, "not_found", "node_not_found")
    with pytest.raises(NotFound) as exc:
        await st.bus.request(
            f"{PREFIX}.volume.publish", {"volume_id": vol["id"], "node_id": uid("x")}, token=st.tenants.a
        )
    assert exc.value.reason == "node_not_found"
    r = await st.att.get(f"/v1/nodes/{uid('never-seen')}", headers=st.h(st.tenants.admin))
    assert_problem(r, 404, "not_found", "node_not_found")
    r = await st.att.post(f"/v1/nodes/{uid('x')}/down", json={}, headers=st.h(st.tenants.admin))
    assert_problem(r, 404, "not_found", "node_not_found")
    r = await st.att.post(f"/v1/nodes/{uid('x')}/status", json={"ready": False}, headers=st.h(st.tenants.admin))
    assert_problem(r, 404, "not_found", "node_not_found")
    assert await whole_state(st) == before


async def test_unknown_volume_is_404(st: Stack) -> None:
    node = uid("n")
    await register_node(st, node)
    before = await whole_state(st)
    r = await publish(st, st.tenants.a, "vol-does-not-exist", node)
    assert_problem(r, 404, "not_found", "volume_not_found")
    with pytest.raises(NotFound):
        await st.bus.request(f"{PREFIX}.volume.publish", {"volume_id": "vol-nope", "node_id": node}, token=st.tenants.a)
    assert await whole_state(st) == before


async def test_another_tenants_volume_is_404_and_changes_nothing(st: Stack) -> None:
    vol = await st.volume("mine")
    node, other = uid("n"), uid("o")
    async with EventTap(st.bus.nc, "berth.events.>") as tap:

        def ours() -> list[str]:
            mine = {st.tenants.tenant_a, st.tenants.tenant_b}
            return [
                e["type"]
                for e in tap.events
                if e["source"] == "berth/attacher" and (e["berthtenant"] in mine or e["subject"] in (node, other))
            ]

        for n in (node, other):
            await register_node(st, n)
        assert (await publish(st, st.tenants.a, vol["id"], node)).status_code == 201
        await tap.wait_for(lambda _evs: ev("attachment", "created") in ours())
        before = await whole_state(st)
        # Tenant B cannot publish, steal, or unpublish tenant A's volume; it cannot even tell it exists.
        for target in (node, other):
            r = await publish(st, st.tenants.b, vol["id"], target)
            missing = await publish(st, st.tenants.b, "vol-does-not-exist", target)
            body = assert_problem(r, 404, "not_found", "volume_not_found")
            unknown = assert_problem(missing, 404, "not_found", "volume_not_found")
            assert body["detail"] == unknown["detail"].replace("vol-does-not-exist", vol["id"])
        params = {"volume_id": vol["id"], "node_id": node}
        r = await st.att.delete("/v1/attachments", params=params, headers=st.h(st.tenants.b))
        assert_problem(r, 404, "not_found", "volume_not_found")
        with pytest.raises(NotFound):
            await st.bus.request(f"{PREFIX}.volume.unpublish", params, token=st.tenants.b)
        with pytest.raises(NotFound):
            await st.bus.request(f"{PREFIX}.volume.publish", {**params, "node_id": other}, token=st.tenants.b)
        assert await whole_state(st) == before
        # A change of our own goes through the same outbox after the refused calls: once its
        # event is out, anything they had queued would have been too.
        r = await st.att.delete("/v1/attachments", params=params, headers=st.h(st.tenants.a))
        assert r.status_code == 204
        await tap.wait_for(lambda _evs: ev("attachment", "deleted") in ours())
        registered = ev("node", "registered")
        assert ours() == [registered, registered, ev("attachment", "created"), ev("attachment", "deleted")]


async def test_member_cannot_list_another_tenants_attachments(st: Stack) -> None:
    va = await st.volume("a-vol")
    vb = await b_volume(st, "b-vol")
    node = uid("n")
    await register_node(st, node)
    assert (await publish(st, st.tenants.a, va["id"], node)).status_code == 201
    assert (await publish(st, st.tenants.b, vb["id"], node)).status_code == 201
    mine = await attachments(st, st.tenants.a)
    assert [a["volume_id"] for a in mine] == [va["id"]]
    assert {a["tenant"] for a in mine} == {st.tenants.tenant_a}
    assert await attachments(st, st.tenants.a, volume_id=vb["id"]) == []
    assert [a["volume_id"] for a in await attachments(st, st.tenants.a, node_id=node)] == [va["id"]]
    assert [a["volume_id"] for a in await attachments(st, st.tenants.b)] == [vb["id"]]
    over_bus = await st.bus.request_model(
        f"{PREFIX}.attachment.list", {"volume_id": vb["id"]}, AttachmentList, token=st.tenants.a
    )
    assert over_bus.items == []
    # The admin sees both.
    assert {a["volume_id"] for a in await attachments(st, node_id=node)} == {va["id"], vb["id"]}


async def test_tenant_token_cannot_heartbeat_or_administer_nodes(st: Stack) -> None:
    node = uid("n")
    await register_node(st, node)
    before = await whole_state(st)
    for token in (st.tenants.a, st.tenants.b):
        r = await register_node(st, node, token)
        assert_problem(r, 403, "permission_denied")
        r = await register_node(st, uid("new"), token)
        assert_problem(r, 403, "permission_denied")
        calls = [
            ("POST", f"/v1/nodes/{node}/status", {"out_of_service": True}),
            ("POST", f"/v1/nodes/{node}/down", {"reason": "tenant says so"}),
            ("POST", f"/v1/nodes/{node}/fence", None),
            ("POST", f"/v1/nodes/{node}/force-unfence", None),
            ("POST", f"/v1/nodes/{node}/unfence", {"boot_id": "b", "staged": []}),
            ("GET", "/v1/fences", None),
            ("GET", "/v1/nodes", None),
            ("GET", f"/v1/nodes/{node}", None),
        ]
        for method, path, body in calls:
            r = await st.att.request(method, path, json=body, headers=st.h(token))
            assert_problem(r, 403, "permission_denied")
        for subject, payload in (
            ("node.heartbeat", {"node_id": node, "boot_id": "b"}),
            ("node.down", {"node_id": node}),
            ("node.fence", {"node_id": node}),
            ("node.status", {"node_id": node, "out_of_service": True}),
            ("node.force_unfence", {"node_id": node}),
        ):
            with pytest.raises(PermissionDenied):
                await st.bus.request(f"{PREFIX}.{subject}", payload, token=token)
    r = await st.att.get("/v1/nodes", headers={"Authorization": "Bearer not-a-token"})
    assert_problem(r, 401, "unauthenticated")
    r = await st.att.get("/v1/attachments")
    assert r.status_code == 401, r.text
    after = await whole_state(st)
    assert after == before
    assert (await st.node(node))["state"] == "alive"


async def test_publish_to_a_fenced_node_is_refused(st: Stack) -> None:
    vol = await st.volume("fenced")
    node = uid("n")
    await register_node(st, node)
    await fence_node(st, node)
    before = await whole_state(st)
    r = await publish(st, st.tenants.a, vol["id"], node)
    body = assert_problem(r, 409, "failed_precondition", "node_not_alive")
    assert "fenced" in body["detail"]
    with pytest.raises(FailedPrecondition) as exc:
        await st.bus.request(f"{PREFIX}.volume.publish", {"volume_id": vol["id"], "node_id": node}, token=st.tenants.a)
    assert exc.value.reason == "node_not_alive"
    # Its heartbeats keep being answered "fenced" and do not revive it.
    reply = HeartbeatReply.model_validate((await register_node(st, node)).json())
    assert (reply.state, reply.fenced, reply.fence_epoch) == ("fenced", True, 1)
    after = await whole_state(st)
    assert (after["attachments"], after["fences"]) == (before["attachments"], before["fences"])
    assert (await st.node(node))["state"] == "fenced"


# -- events --------------------------------------------------------------------------------------


async def test_fence_and_failover_events(st: Stack) -> None:
    vol = await st.volume("ev")
    old, new = uid("old"), uid("new")
    async with (
        EventTap(st.bus.nc, f"berth.events.{st.tenants.tenant_a}.>") as tenant_a,
        EventTap(st.bus.nc, f"berth.events.{st.tenants.tenant_b}.>") as tenant_b,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as system,
    ):
        for n in (old, new):
            await register_node(st, n)
        att = (await publish(st, st.tenants.a, vol["id"], old)).json()
        created = await tenant_a.wait_type(att["id"], ev("attachment", "created"))
        assert created["source"] == "berth/attacher"
        assert created["specversion"] == "1.0"
        assert created["berthtenant"] == st.tenants.tenant_a
        assert created["data"]["node_id"] == old

        await fence_node(st, old)
        fencing = await system.wait_type(old, ev("node", "fencing"))
        fenced = await system.wait_type(old, ev("node", "fenced"))
        assert fencing["data"]["epoch"] == fenced["data"]["epoch"] == 1
        assert fenced["data"]["released"] == [vol["id"]]
        assert fenced["berthtenant"] == "_system"
        assert system.types_about(old).index(ev("node", "fencing")) < system.types_about(old).index(
            ev("node", "fenced")
        )
        released = await tenant_a.wait_type(att["id"], ev("attachment", "released"))
        assert released["data"]["state"] == "released"
        assert released["data"]["fence_epoch"] == 1
        assert released["data"]["node_id"] == old

        # Failover: the released grant no longer counts; the new node gets the volume at once.
        moved = await publish(st, st.tenants.a, vol["id"], new)
        assert moved.status_code == 201, moved.text
        states = {a["node_id"]: a["state"] for a in await attachments(st, st.tenants.a, volume_id=vol["id"])}
        assert states == {old: "released", new: "attached"}
        # The fenced node is told which volumes it must not stage again.
        reply = HeartbeatReply.model_validate((await register_node(st, old)).json())
        assert reply.blocked_volumes == [vol["id"]]

        r = await st.att.post(
            f"/v1/nodes/{old}/unfence", json={"boot_id": "boot-2", "staged": []}, headers=st.h(st.tenants.admin)
        )
        assert r.status_code == 200, r.text
        assert Node.model_validate(r.json()).state == "alive"
        unfenced = await system.wait_type(old, ev("node", "unfenced"))
        assert unfenced["data"]["epoch"] == 1
        fences = (await st.att.get("/v1/fences", params={"node_id": old}, headers=st.h(st.tenants.admin))).json()[
            "items"
        ]
        assert [(f["epoch"], f["state"]) for f in fences] == [(1, "done")]

        await tenant_a.wait_for(lambda evs: sum(e["type"] == ev("attachment", "created") for e in evs) == 2)
        # Tenant B's subjects carried none of it; node events never go to a tenant's subjects.
        assert tenant_b.events == []
        assert all(e["berthtenant"] == st.tenants.tenant_a for e in tenant_a.events)
        assert not any(e["type"].startswith("io.berth.node.") for e in tenant_a.events)
        for msg in tenant_a.msgs + system.msgs:
            assert msg.headers is not None
            assert msg.headers["Nats-Msg-Id"] == json.loads(msg.data)["id"]


async def test_racing_first_heartbeats_register_the_node_once(st: Stack) -> None:
    # A node agent restarting while its previous heartbeat is still in flight sends two
    # "first" heartbeats; on PostgreSQL both used to find no row and one failed on the key.
    node_id = uid("node")
    replies = await asyncio.gather(*(register_node(st, node_id) for _ in range(8)))
    assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies]
    assert {r.json()["state"] for r in replies} == {"alive"}
    assert (await st.node(node_id))["state"] == "alive"

"""The fencing policy end to end: manual approval, flapping, the cap and the rate limit,
explicit down and out-of-service signals, and the conditions for unfencing.

Volumes are published but never staged, so nothing needs loop devices: a fence of such a
node cuts nothing on the file backend, and its grants are released all the same.
"""

from __future__ import annotations

from pathlib import Path

from attacher_checks import (
    SYSTEM_EVENTS,
    EventTap,
    add_token,
    assert_problem,
    attachments,
    ev,
    fences,
    node_state,
    publish,
    register_node,
    state_is,
    uid,
)
from attacher_harness import Stack, stack

from berth_attacher.agent import NodeAgent
from berth_testing import MakeSettings, Tenants, eventually
from berth_testing.single_writer import play_reboot

FAST = 8.0  # seconds: generous bound for what takes a few monitor passes (0.1 s each)


async def node_agent(st: Stack, node_id: str, token: str) -> NodeAgent:
    agent = NodeAgent(st.bus, node_id, token, interval_s=0.2, mount_root=st.mount_root)
    await agent.heartbeat()
    agent.start()
    st.agents.append(agent)
    return agent


async def probe_passes(st: Stack) -> None:
    """Return only after the monitor has run many passes: a fresh node heartbeats once and
    is left silent until the monitor calls it suspect (half the grace), then beats again."""
    probe = uid("probe")
    await register_node(st, probe)
    await eventually(state_is(st, probe, "suspect"), within=FAST, what="probe suspect")
    await register_node(st, probe)


async def holder_of(st: Stack, volume_id: str) -> str:
    other = uid("elsewhere")
    await register_node(st, other)
    r = await publish(st, st.tenants.a, volume_id, other)
    body = assert_problem(r, 409, "failed_precondition", "published_elsewhere")
    return str(body["holder"])


# -- manual fencing ---------------------------------------------------------------------------


async def test_manual_mode_fences_only_when_an_admin_approves(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with (
        stack(make_settings, tenants, tmp_path, fence_mode="manual") as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        vol = await st.volume("manual")
        n = uid("n")
        agent = await st.agent(n)
        assert (await publish(st, tenants.a, vol["id"], n)).status_code == 201
        await agent.stop()
        await eventually(state_is(st, n, "awaiting_approval"), within=FAST, what="awaiting approval")
        await tap.wait_type(n, ev("node", "awaiting_fence_approval"))

        # However long it waits, nothing is cut and nothing moves.
        await probe_passes(st)
        assert await node_state(st, n) == "awaiting_approval"
        assert await fences(st, n) == []
        assert [a["state"] for a in await attachments(st, volume_id=vol["id"])] == ["attached"]
        assert await holder_of(st, vol["id"]) == n
        assert ev("node", "fencing") not in tap.types_about(n)

        # Only an admin may approve.
        r = await st.att.post(f"/v1/nodes/{n}/fence", headers=st.h(tenants.a))
        assert_problem(r, 403, "permission_denied")
        r = await st.att.post(f"/v1/nodes/{n}/fence", headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        assert r.json()["state"] in ("fencing", "fenced")
        await eventually(state_is(st, n, "fenced"), within=FAST, what="fenced after approval")
        fenced = await tap.wait_type(n, ev("node", "fenced"))
        assert fenced["data"]["released"] == [vol["id"]]
        assert [(f["epoch"], f["state"]) for f in await fences(st, n)] == [(1, "done")]
        # Approving again is a no-op.
        r = await st.att.post(f"/v1/nodes/{n}/fence", headers=st.h(tenants.admin))
        assert r.json()["state"] == "fenced"
        assert len(await fences(st, n)) == 1
        other = uid("other")
        await register_node(st, other)
        assert (await publish(st, tenants.a, vol["id"], other)).status_code == 201


async def test_manual_mode_node_back_before_approval_is_not_fenced(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with (
        stack(make_settings, tenants, tmp_path, fence_mode="manual") as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        n = uid("n")
        agent = await st.agent(n)
        await agent.stop()
        await eventually(state_is(st, n, "awaiting_approval"), within=FAST, what="awaiting approval")
        agent.start()
        await eventually(state_is(st, n, "alive"), within=FAST, what="back alive")
        await tap.wait_type(n, ev("node", "recovered"))
        assert await fences(st, n) == []


# -- flapping ---------------------------------------------------------------------------------


async def test_flapping_node_is_never_fenced(make_settings: MakeSettings, tenants: Tenants, tmp_path: Path) -> None:
    # Suspect after half the grace (1.25 s), dead after 2.5 s: each silence below stops at suspect.
    async with (
        stack(make_settings, tenants, tmp_path, dead_after_s=2.5) as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        vol = await st.volume("flap")
        n = uid("n")
        agent = await st.agent(n)
        assert (await publish(st, tenants.a, vol["id"], n)).status_code == 201
        for _ in range(2):
            await agent.stop()
            await eventually(state_is(st, n, "suspect"), within=FAST, what="suspect")
            agent.start()
            await eventually(state_is(st, n, "alive"), within=FAST, what="alive again")
        assert await fences(st, n) == []
        assert [a["state"] for a in await attachments(st, volume_id=vol["id"])] == ["attached"]
        node = await st.node(n)
        assert node["fence_epoch"] == 0
        # Registered, and nothing else: suspicion is not an event, and no fence ever started.
        await tap.wait_type(n, ev("node", "registered"))
        assert tap.types_about(n) == [ev("node", "registered")]


# -- the cap and the rate limit -------------------------------------------------------------------


async def test_cap_fences_one_node_and_defers_the_other_until_it_is_unfenced(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with (
        stack(make_settings, tenants, tmp_path, max_fenced_nodes=1) as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        n1, n2 = uid("n1"), uid("n2")
        agents = {n: await st.agent(n) for n in (n1, n2)}
        vols = {}
        for n in (n1, n2):
            vols[n] = (await st.volume(f"cap-{n}"))["id"]
            assert (await publish(st, tenants.a, vols[n], n)).status_code == 201
        for agent in agents.values():
            await agent.stop()

        async def one_fenced_one_deferred() -> bool:
            states = sorted([await node_state(st, n1), await node_state(st, n2)])
            return states == ["dead", "fenced"]

        await eventually(one_fenced_one_deferred, within=FAST, what="one fenced, one deferred")
        first = n1 if await node_state(st, n1) == "fenced" else n2
        second = n2 if first == n1 else n1
        deferred = await tap.wait_type(second, ev("node", "fence_deferred"))
        assert "cap 1" in deferred["data"]["reason"]
        assert "cap 1" in (await st.node(second))["state_reason"]
        assert await fences(st, second) == []
        assert await holder_of(st, vols[second]) == second  # its volume stays where it is

        # Many monitor passes later: still deferred, said once, and the reason does not pile up.
        await probe_passes(st)
        node = await st.node(second)
        assert node["state"] == "dead"
        assert node["state_reason"].count("fence deferred") == 1, node["state_reason"]
        assert tap.types_about(second).count(ev("node", "fence_deferred")) == 1

        # The first node comes back clean (restarted) and is unfenced: the cap frees up and the second is fenced.
        play_reboot(agents[first])
        agents[first].start()
        await tap.wait_type(first, ev("node", "unfenced"))
        await eventually(state_is(st, second, "fenced"), within=FAST, what="second fenced")
        (fence,) = await fences(st, second)
        assert fence["reason"].count("fence deferred") <= 1, fence["reason"]
        released = {a["volume_id"] for a in await attachments(st) if a["state"] == "released"}
        assert vols[second] in released


async def test_rate_limit_defers_and_an_admin_approval_overrides_it(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with (
        stack(make_settings, tenants, tmp_path, max_fences_per_window=1, fence_window_s=600.0) as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        n1, n2 = uid("n1"), uid("n2")
        agents = {n: await st.agent(n) for n in (n1, n2)}
        for agent in agents.values():
            await agent.stop()

        async def one_fenced_one_deferred() -> bool:
            return sorted([await node_state(st, n1), await node_state(st, n2)]) == ["dead", "fenced"]

        await eventually(one_fenced_one_deferred, within=FAST, what="one fenced, one deferred")
        first, second = (n1, n2) if await node_state(st, n1) == "fenced" else (n2, n1)
        deferred = await tap.wait_type(second, ev("node", "fence_deferred"))
        assert "limit 1" in deferred["data"]["reason"]
        # ...even with the first node unfenced: the window, not the cap, holds it.
        play_reboot(agents[first])
        agents[first].start()
        await eventually(state_is(st, first, "alive"), within=FAST, what="first unfenced")
        await probe_passes(st)
        assert await node_state(st, second) == "dead"
        assert await fences(st, second) == []
        r = await st.att.post(f"/v1/nodes/{second}/fence", headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        await eventually(state_is(st, second, "fenced"), within=FAST, what="approved fence")


# -- explicit signals ------------------------------------------------------------------------------


async def test_admin_down_fences_a_live_node_at_once(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    # A minute of grace: only the admin's call can make this node dead within the test.
    async with (
        stack(make_settings, tenants, tmp_path, dead_after_s=60.0) as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        vol = await st.volume("down")
        n = uid("n")
        agent = await st.agent(n)  # still heartbeating: partitioned from its workload, say
        assert (await publish(st, tenants.a, vol["id"], n)).status_code == 201
        r = await st.att.post(
            f"/v1/nodes/{n}/down", json={"reason": "disk controller on fire"}, headers=st.h(tenants.a)
        )
        assert_problem(r, 403, "permission_denied")
        r = await st.att.post(
            f"/v1/nodes/{n}/down", json={"reason": "disk controller on fire"}, headers=st.h(tenants.admin)
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"] in ("fencing", "fenced")
        fencing = await tap.wait_type(n, ev("node", "fencing"), within_s=FAST)
        assert "disk controller on fire" in fencing["data"]["reason"]
        fenced = await tap.wait_type(n, ev("node", "fenced"), within_s=FAST)
        assert fenced["data"]["released"] == [vol["id"]]
        # The live agent learns it is fenced and drops what it held, but it did not restart:
        # it stays fenced until an admin vouches for it. The grant stays released.
        await eventually(lambda: agent.beats.unfence_refused == "node_not_restarted", within=FAST, what="refused")
        assert await node_state(st, n) == "fenced" and agent.held == {}
        r = await st.att.post(f"/v1/nodes/{n}/force-unfence", headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        unfenced = await tap.wait_type(n, ev("node", "unfenced"), within_s=FAST)
        assert unfenced["data"]["by"] == "admin"
        assert r.json()["state_reason"] == "unfenced by an admin"
        await eventually(state_is(st, n, "alive"), within=FAST, what="unfenced")
        assert [a["state"] for a in await attachments(st, volume_id=vol["id"])] == ["released"]
        other = uid("other")
        await register_node(st, other)
        assert (await publish(st, tenants.a, vol["id"], other)).status_code == 201
        assert [(f["epoch"], f["state"]) for f in await fences(st, n)] == [(1, "done")]


async def test_out_of_service_signal_fences_at_once_and_holds_until_cleared(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with (
        stack(make_settings, tenants, tmp_path) as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        vol = await st.volume("oos")
        n = uid("n")
        agent = await st.agent(n)
        assert (await publish(st, tenants.a, vol["id"], n)).status_code == 201
        r = await st.att.post(f"/v1/nodes/{n}/status", json={"out_of_service": True}, headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        assert r.json()["out_of_service"] is True
        fenced = await tap.wait_type(n, ev("node", "fenced"), within_s=FAST)
        assert fenced["data"]["released"] == [vol["id"]]
        assert "out-of-service" in (await fences(st, n))[0]["reason"]
        # While the node is declared out of service it stays fenced, although its agent is
        # clean and asks to be unfenced on every heartbeat: no fence/unfence cycle.
        await probe_passes(st)
        assert await node_state(st, n) == "fenced"
        assert len(await fences(st, n)) == 1
        r = await st.att.post(
            f"/v1/nodes/{n}/unfence", json={"boot_id": "b", "staged": []}, headers=st.h(tenants.admin)
        )
        assert_problem(r, 409, "failed_precondition", "node_out_of_service")
        # Cleared, and the node restarted: its agent's next request unfences it, and it is
        # not fenced again.
        r = await st.att.post(f"/v1/nodes/{n}/status", json={"out_of_service": False}, headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        play_reboot(agent)
        await eventually(state_is(st, n, "alive"), within=FAST, what="unfenced")
        await probe_passes(st)
        assert await node_state(st, n) == "alive"
        assert len(await fences(st, n)) == 1


async def test_not_ready_is_required_when_the_policy_says_so(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    async with stack(make_settings, tenants, tmp_path, require_not_ready=True) as st:
        n = uid("n")
        agent = await st.agent(n)
        await agent.stop()
        await eventually(state_is(st, n, "suspect"), within=FAST, what="suspect")
        await probe_passes(st)  # well past the grace: silence alone does not kill it
        assert await node_state(st, n) == "suspect"
        r = await st.att.post(f"/v1/nodes/{n}/status", json={"ready": False}, headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        await eventually(state_is(st, n, "fenced"), within=FAST, what="fenced once NotReady")


# -- unfencing ------------------------------------------------------------------------------------------


async def test_unfence_refused_while_the_node_reports_staged_volumes(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    node_token = add_token(tenants, "nodes", ["node"])
    async with (
        stack(make_settings, tenants, tmp_path, dead_after_s=60.0) as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        vol = await st.volume("stale")
        n = uid("n")
        assert (await register_node(st, n, node_token)).status_code == 200
        r = await st.att.post(f"/v1/nodes/{n}/unfence", json={"boot_id": "b", "staged": []}, headers=st.h(node_token))
        assert_problem(r, 409, "failed_precondition", "node_not_fenced")
        assert (await publish(st, tenants.a, vol["id"], n)).status_code == 201
        r = await st.att.post(f"/v1/nodes/{n}/down", json={}, headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        await eventually(state_is(st, n, "fenced"), within=FAST, what="fenced")

        stale = {"boot_id": "b", "staged": [{"volume_id": vol["id"], "device": "/dev/loop9", "mount": "/mnt/x"}]}
        for token in (node_token, tenants.admin):
            r = await st.att.post(f"/v1/nodes/{n}/unfence", json=stale, headers=st.h(token))
            body = assert_problem(r, 409, "failed_precondition", "stale_mounts")
            assert vol["id"] in body["detail"]
        # A heartbeat reporting the stale mount is answered "fenced" and changes nothing.
        beat = await register_node(st, n, node_token, staged=stale["staged"])
        assert (beat.json()["state"], beat.json()["fenced"]) == ("fenced", True)
        assert await node_state(st, n) == "fenced"
        assert ev("node", "unfenced") not in tap.types_about(n)

        r = await st.att.post(f"/v1/nodes/{n}/unfence", json={"boot_id": "b", "staged": []}, headers=st.h(node_token))
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "alive"
        await tap.wait_type(n, ev("node", "unfenced"))
        # The node is back, but the volume fenced away from it stays released until unpublished.
        assert [a["state"] for a in await attachments(st, volume_id=vol["id"])] == ["released"]
        (fence,) = await fences(st, n)
        assert fence["state"] == "done"


async def test_manual_unfence_mode_needs_an_admin(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path
) -> None:
    node_token = add_token(tenants, "nodes", ["node"])
    async with (
        stack(make_settings, tenants, tmp_path, unfence_mode="manual") as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        n = uid("n")
        agent = await node_agent(st, n, node_token)
        await agent.stop()
        await eventually(state_is(st, n, "fenced"), within=FAST, what="fenced")
        # Back and clean, but its own request is not enough under this policy.
        agent.start()
        r = await st.att.post(f"/v1/nodes/{n}/unfence", json={"boot_id": "b", "staged": []}, headers=st.h(node_token))
        assert_problem(r, 409, "failed_precondition", "unfence_needs_admin")
        await probe_passes(st)
        assert await node_state(st, n) == "fenced"
        assert agent.fenced
        r = await st.att.post(f"/v1/nodes/{n}/force-unfence", headers=st.h(node_token))
        assert_problem(r, 403, "permission_denied")
        r = await st.att.post(f"/v1/nodes/{n}/force-unfence", headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "alive"
        await tap.wait_type(n, ev("node", "unfenced"))
        await eventually(lambda: _not_fenced(agent), within=FAST, what="agent learns it is unfenced")
        assert await node_state(st, n) == "alive"


async def _not_fenced(agent: NodeAgent) -> bool:
    return not agent.fenced

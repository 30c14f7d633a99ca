"""The out-of-service taint: the real Kubernetes client against a fake API server over HTTP.

Fencing is what makes the taint safe to automate, so the taint comes after a completed
fence and never before: while a fence fails or hangs, Kubernetes is not touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from attacher_checks import SYSTEM_EVENTS, EventTap, attachments, ev, fences, publish, state_is, uid
from attacher_harness import stack
from fake_kube import FakeKube, fake_kube
from kubernetes.client.exceptions import ApiException

from berth_attacher.kube import OUT_OF_SERVICE_KEY, KubeTainter
from berth_shared.backends import FenceTarget
from berth_shared.backends.file import FileBackend
from berth_testing import MakeSettings, Tenants, eventually
from berth_testing.single_writer import play_reboot

OURS = {"key": OUT_OF_SERVICE_KEY, "value": "nodeshutdown", "effect": "NoExecute"}
OTHER = {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
FAST = 8.0


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "kube-token"
    path.write_text("sa-token-1\n")
    return path


@pytest.fixture
async def kube(token_file: Path) -> AsyncIterator[FakeKube]:
    async with fake_kube(token_file) as k:
        yield k


def kube_settings(kube: FakeKube, token_file: Path) -> dict[str, Any]:
    return {"kube_api_url": kube.url, "kube_token_file": str(token_file)}


# -- the tainter alone ----------------------------------------------------------------------------


async def test_taint_and_untaint_are_idempotent_and_keep_other_taints(kube: FakeKube, token_file: Path) -> None:
    kube.add_node("worker-1", taints=[OTHER])
    tainter = KubeTainter(kube.url, token_file=token_file)
    try:
        await tainter.taint("worker-1")
        assert kube.taints("worker-1") == [OTHER, OURS]
        await tainter.taint("worker-1")
        assert kube.taints("worker-1") == [OTHER, OURS]
        assert len(kube.patches()) == 1  # the second call saw the taint and patched nothing
        # The client speaks a strategic merge patch, which replaces a node's taint list.
        assert kube.patches()[0][2] == "application/strategic-merge-patch+json"

        await tainter.untaint("worker-1")
        assert kube.taints("worker-1") == [OTHER]
        await tainter.untaint("worker-1")
        assert kube.taints("worker-1") == [OTHER]
        assert len(kube.patches()) == 2
    finally:
        tainter.close()


async def test_tainter_reads_the_rotated_token_and_retries_a_conflict(kube: FakeKube, token_file: Path) -> None:
    kube.add_node("worker-2")
    tainter = KubeTainter(kube.url, token_file=token_file)
    try:
        await tainter.taint("worker-2")
        # The service-account token rotates: the next call uses the new one.
        await asyncio.to_thread(token_file.write_text, "sa-token-2")
        await tainter.untaint("worker-2")
        assert kube.taints("worker-2") == []

        # Someone adds a taint between our read and our patch: the server answers 409 and
        # the tainter redoes its edit on the fresh node instead of overwriting theirs.
        def concurrent_writer(k: FakeKube) -> None:
            k.nodes["worker-2"]["spec"]["taints"] = [OTHER]
            k.bump("worker-2")

        kube.before_next_patch = concurrent_writer
        await tainter.taint("worker-2")
        assert kube.taints("worker-2") == [OTHER, OURS]
        assert len(kube.patches()) == 4  # taint, untaint, the conflicting patch, its retry
    finally:
        tainter.close()


async def test_unknown_node_or_bad_token(kube: FakeKube, token_file: Path) -> None:
    tainter = KubeTainter(kube.url, token_file=token_file)
    try:
        with pytest.raises(ApiException) as missing:
            await tainter.taint("no-such-node")
        assert missing.value.status == 404
        await tainter.untaint("no-such-node")  # no node, no taint: done
        kube.add_node("worker-3")
        other_token = token_file.with_name("other-token")
        other_token.write_text("not-the-token")
        wrong = KubeTainter(kube.url, token_file=other_token)
        try:
            with pytest.raises(ApiException) as denied:
                await wrong.taint("worker-3")
            assert denied.value.status == 401
        finally:
            wrong.close()
        assert kube.taints("worker-3") == []
    finally:
        tainter.close()


# -- in the attacher: after a completed fence, and only then ---------------------------------------------


class FenceGate:
    """Stands in for the file backend's fence: fails `failures` times, then waits for the
    test to open the gate before doing the real thing."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.opened = asyncio.Event()
        self.real = FileBackend.fence

    async def fence(self, backend: FileBackend, target: FenceTarget) -> list[str]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise OSError(f"storage unreachable (attempt {self.attempts})")
        await self.opened.wait()
        return await self.real(backend, target)


async def test_taint_only_after_a_completed_fence_and_removed_after_unfence(
    make_settings: MakeSettings,
    tenants: Tenants,
    tmp_path: Path,
    kube: FakeKube,
    token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = FenceGate(failures=2)

    async def gated_fence(backend: FileBackend, target: FenceTarget) -> list[str]:
        return await gate.fence(backend, target)

    monkeypatch.setattr(FileBackend, "fence", gated_fence)
    n = uid("worker")
    kube.add_node(n, taints=[OTHER])
    async with (
        stack(make_settings, tenants, tmp_path, **kube_settings(kube, token_file)) as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        vol = await st.volume("kube")
        agent = await st.agent(n)
        assert (await publish(st, tenants.a, vol["id"], n)).status_code == 201
        await agent.stop()

        # The fence fails, is retried, then hangs: the node is fencing, its grant held, no taint.
        await eventually(state_is(st, n, "fencing"), within=FAST, what="fencing")

        async def retried_and_hanging() -> bool:
            return gate.attempts > gate.failures

        await eventually(retried_and_hanging, within=FAST, what="fence retried after failures")
        assert (await st.node(n))["state"] == "fencing"
        assert kube.taints(n) == [OTHER]
        assert kube.calls == []  # Kubernetes not even asked
        assert ev("node", "tainted") not in tap.types_about(n)
        assert [a["state"] for a in await attachments(st, volume_id=vol["id"])] == ["attached"]
        (fence,) = await fences(st, n)
        assert fence["state"] == "pending"

        # The fence completes: then, and only then, the taint.
        gate.opened.set()
        fenced = await tap.wait_type(n, ev("node", "fenced"), within_s=FAST)
        tainted = await tap.wait_type(n, ev("node", "tainted"), within_s=FAST)
        assert tainted["data"]["epoch"] == fenced["data"]["epoch"] == 1
        types = tap.types_about(n)
        assert types.index(ev("node", "fenced")) < types.index(ev("node", "tainted"))
        assert kube.taints(n) == [OTHER, OURS]
        assert [a["state"] for a in await attachments(st, volume_id=vol["id"])] == ["released"]

        # Back (restarted), clean, unfenced: the taint goes (the other one stays), recorded and evented.
        play_reboot(agent)
        agent.start()
        await tap.wait_type(n, ev("node", "untainted"), within_s=FAST)
        await eventually(state_is(st, n, "alive"), within=FAST, what="unfenced")
        assert kube.taints(n) == [OTHER]
        types = tap.types_about(n)
        assert types.index(ev("node", "unfenced")) < types.index(ev("node", "untainted"))
        # Nothing brings it back: the attacher knows it removed its own taint.
        assert types.count(ev("node", "tainted")) == 1
        assert len(await fences(st, n)) == 1


async def test_no_taint_when_kubernetes_refuses_and_failover_goes_on(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, kube: FakeKube, token_file: Path
) -> None:
    n = uid("not-in-kube")  # Kubernetes does not know this node: the taint fails with 404
    async with (
        stack(make_settings, tenants, tmp_path, dead_after_s=60.0, **kube_settings(kube, token_file)) as st,
        EventTap(st.bus.nc, SYSTEM_EVENTS) as tap,
    ):
        vol = await st.volume("kube-404")
        agent = await st.agent(n)
        assert (await publish(st, tenants.a, vol["id"], n)).status_code == 201
        await agent.stop()
        r = await st.att.post(f"/v1/nodes/{n}/down", json={}, headers=st.h(tenants.admin))
        assert r.status_code == 200, r.text
        await tap.wait_type(n, ev("node", "fenced"), within_s=FAST)
        await eventually(lambda: _asked(kube, n), within=FAST, what="Kubernetes asked for the node")
        assert [a["state"] for a in await attachments(st, volume_id=vol["id"])] == ["released"]
        # Unfenced without a taint to remove: Kubernetes is not asked again.
        asked = len(kube.calls)
        play_reboot(agent)
        agent.start()
        await tap.wait_type(n, ev("node", "unfenced"), within_s=FAST)
        assert len(kube.calls) == asked
        assert ev("node", "tainted") not in tap.types_about(n)
        assert ev("node", "untainted") not in tap.types_about(n)


async def _asked(kube: FakeKube, node: str) -> bool:
    return any(path.endswith(f"/nodes/{node}") for _m, path, _ct in kube.calls)

"""Single writer and fence before failover on a real Ceph (issues 4 and 5).

Two node agents on this host, a provisioner with an `rbd` (or `cephfs`) storage cluster and
an attacher, in-process on one nats-server. Node A publishes and stages the volume (RBD:
ext4 over rbd-fuse + loop, or whatever block path the host has; CephFS: ceph-fuse as A's
own cephx id) and writes, keeping a file open. Node B's publish is refused while A holds
it. A stops heartbeating without unmounting (a partitioned node); the attacher fences it
at Ceph (RBD: blocklist of A's client address + break of its exclusive lock; CephFS:
eviction of A's sessions + blocklist); A's next write fails; only then B's publish
succeeds, and B finds A's data. A comes back, learns it was fenced, drops its mounts and
is unfenced (its blocklist entries removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from attacher_harness import Stack, stack
from ceph_clusters import TYPES, register_ceph

from berth_attacher.agent import Held
from berth_shared.backends import build_backend
from berth_shared.backends.cephfs import CephFsBackend
from berth_shared.backends.rbd import RbdBackend
from berth_shared.errors import FailedPrecondition
from berth_shared.node import CephClientSpec
from berth_shared.node import ceph as node
from berth_testing import MakeSettings, Tenants, eventually
from berth_testing.ceph import CephCluster, skip_unless_can_attach
from berth_testing.single_writer import play_reboot

pytestmark = pytest.mark.root
T = TypeVar("T")


async def _io(fn: Callable[[], T], within: float = 30.0) -> T:
    """Blocking file I/O on a (possibly fenced) mount, in a daemon thread with a bound, the
    event loop free meanwhile (the agents' heartbeats run on it): a fenced client must fail,
    never hang the test. Never `os.sync()` here: it would flush every mount of the host,
    other tests' wedged ones included."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        def settle(result: T | None, error: BaseException | None) -> None:
            if done.done():
                return  # the test gave up waiting
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

        try:
            loop.call_soon_threadsafe(settle, fn(), None)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)

    threading.Thread(target=run, daemon=True).start()
    try:
        return await asyncio.wait_for(done, within)
    except TimeoutError:
        raise AssertionError(f"file I/O hung for {within}s") from None


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _append(fd: int, data: bytes) -> None:
    os.write(fd, data)
    os.fsync(fd)


async def _state_is(st: Stack, node_id: str, state: str) -> bool:
    return bool((await st.node(node_id))["state"] == state)


async def _fence_of(st: Stack, node_id: str) -> dict[str, Any]:
    r = await st.att.get("/v1/fences", params={"node_id": node_id}, headers=st.h(st.tenants.admin))
    assert r.status_code == 200, r.text
    (fence,) = r.json()["items"]
    return dict(fence)


async def _failover(
    st: Stack,
    kind: str,
    vol: dict[str, Any],
    node_a: str,
    node_b: str,
    specs: dict[str, CephClientSpec],
    staged: Callable[[Held], Awaitable[None]] | None = None,
) -> tuple[float, dict[str, Any], str]:
    """The scenario both backends share; returns (seconds from A's last heartbeat to B
    staged, A's fence record, A's client address). `staged` looks at A's volume first."""
    a = await st.agent(node_a, ceph={kind: specs[node_a]})
    b = await st.agent(node_b, ceph={kind: specs[node_b]})
    held = await a.publish_and_stage(vol["id"])
    assert held.backend == kind and held.client_address, held
    if staged is not None:
        await staged(held)
    mount_a = Path(held.mount)
    await _io(lambda: _write_durably(mount_a / "table.dat", b"committed row\n"))
    # A writer on A that keeps its file open through what follows.
    writer = os.open(mount_a / "wal.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        await _io(lambda: _append(writer, b"wal 1\n"))
        with pytest.raises(FailedPrecondition) as conflict:
            await b.publish_and_stage(vol["id"])
        assert conflict.value.extra.get("holder") == node_a
        assert b.held == {}

        # Let a heartbeat carry A's address to the attacher, then A goes silent, mounts kept.
        beats = a.beats.last_ok
        await eventually(lambda: _after(a.beats.last_ok, beats), within=5, what="a heartbeat with A's volume")
        await a.stop()
        silent_at = time.monotonic()
        await eventually(lambda: _state_is(st, node_a, "fenced"), within=20, what=f"{node_a} fenced")

        # A's writer is cut off at Ceph: its next write does not reach the volume.
        with pytest.raises(OSError):
            await _io(lambda: _append(writer, b"split brain\n"))
    finally:
        with contextlib.suppress(OSError, AssertionError):
            await _io(lambda: os.close(writer), within=10)

    moved = await b.publish_and_stage(vol["id"])
    failover_s = time.monotonic() - silent_at
    mount_b = Path(moved.mount)
    assert moved.client_address and moved.client_address != held.client_address
    assert await _io(lambda: (mount_b / "table.dat").read_bytes()) == b"committed row\n"
    wal = await _io(lambda: (mount_b / "wal.log").read_bytes())
    assert wal.startswith(b"wal 1\n") and b"split brain" not in wal
    await _io(lambda: _write_durably(mount_b / "from-b.txt", b"node B writes"))

    atts = (await st.att.get("/v1/attachments", params={"volume_id": vol["id"]}, headers=st.h(st.tenants.a))).json()
    assert {x["node_id"]: x["state"] for x in atts["items"]} == {node_a: "released", node_b: "attached"}
    fence = await _fence_of(st, node_a)

    # A comes back after a restart: it learns it was fenced, drops its stale mount and is unfenced.
    play_reboot(a)
    a.start()
    await eventually(lambda: _state_is(st, node_a, "alive"), within=20, what=f"{node_a} unfenced")
    await eventually(lambda: _true(not a.fenced), within=5, what=f"{node_a} took in its unfence")
    assert a.held == {} and not node.is_mounted(held.mount)
    with pytest.raises(FailedPrecondition):
        await a.publish_and_stage(vol["id"])

    await b.unpublish(vol["id"])
    assert not node.is_mounted(moved.mount)
    return failover_s, fence, str(held.client_address)


async def _true(value: bool) -> bool:
    return value


async def _after(t: float | None, before: float | None) -> bool:
    return t is not None and (before is None or t > before)


async def test_rbd_fenced_node_cannot_write_and_the_volume_moves(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    skip_unless_can_attach("rbd")
    node_a, node_b = f"na-{uuid.uuid4().hex[:6]}", f"nb-{uuid.uuid4().hex[:6]}"
    spec = CephClientSpec(str(ceph.conf), str(ceph.keyring), ceph.user)
    backend = build_backend("rbd", ceph.backend_config("rbd"))
    assert isinstance(backend, RbdBackend)
    try:
        async with stack(make_settings, tenants, tmp_path) as st:
            await register_ceph(st.prov, tenants.admin, ceph, "rbd")
            vol = await st.volume("pg-0", volume_type=TYPES["rbd"])

            async def recorded(held: Held) -> None:
                # Written on the image before the first write: a fence finds it even if A
                # dies before its next heartbeat carries the address.
                info = await backend.describe_volume(vol["id"])
                assert info.node_addresses == {node_a: held.client_address}

            specs = {node_a: spec, node_b: spec}
            failover_s, fence, addr_a = await _failover(st, "rbd", vol, node_a, node_b, specs, recorded)

            (cut,) = fence["results"].values()
            assert f"blocklist {addr_a}" in cut, cut
            assert f"lock {vol['id']} {addr_a}" in cut, "A held the exclusive lock: the fence broke it"
            # Unfenced: A's entry is gone, and so is its address record on the image.
            assert addr_a not in await backend.blocklist_entries()
            assert node_a not in (await backend.describe_volume(vol["id"])).node_addresses
            print(f"rbd failover: {failover_s:.2f}s from A's silence to B staged")

            r = await st.prov.delete(f"/v1/volumes/{vol['id']}", headers=st.h(tenants.a))
            assert r.status_code == 204, r.text
    finally:
        await backend.close()


async def test_cephfs_evicted_node_cannot_write_and_the_volume_moves(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    skip_unless_can_attach("cephfs")
    node_a, node_b = f"na-{uuid.uuid4().hex[:6]}", f"nb-{uuid.uuid4().hex[:6]}"
    backend = build_backend("cephfs", ceph.backend_config("cephfs"))
    assert isinstance(backend, CephFsBackend)
    try:
        async with stack(make_settings, tenants, tmp_path) as st:
            await register_ceph(st.prov, tenants.admin, ceph, "cephfs")
            vol = await st.volume("shared-0", volume_type=TYPES["cephfs"])
            # The operator's step: each node's own cephx id, authorised on the subvolume,
            # its key in the node's keyring.
            specs = {}
            for n in (node_a, node_b):
                client_id = backend.node_client_id(n)
                key = await backend.authorize(vol["id"], client_id)
                assert key
                keyring = tmp_path / f"{client_id}.keyring"
                keyring.write_text(f"[client.{client_id}]\n\tkey = {key}\n")
                specs[n] = CephClientSpec(str(ceph.conf), str(keyring), client_id)

            failover_s, fence, addr_a = await _failover(st, "cephfs", vol, node_a, node_b, specs)

            (cut,) = fence["results"].values()
            assert any(c.startswith("evict ") and c.endswith(addr_a) for c in cut), cut
            assert f"blocklist {addr_a}" in cut, cut
            assert addr_a not in await backend.blocklist_entries()
            print(f"cephfs failover: {failover_s:.2f}s from A's silence to B staged")

            for n in (node_a, node_b):
                await backend.deauthorize(vol["id"], backend.node_client_id(n))
            r = await st.prov.delete(f"/v1/volumes/{vol['id']}", headers=st.h(tenants.a))
            assert r.status_code == 204, r.text
    finally:
        await backend.close()

"""The CephFS backend against a real Ceph (the session's `ceph` fixture), and the
single-writer proof for shared volumes: an evicted node's writes fail, the next node's
mount finds its data."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth_shared.backends import FenceTarget, QosLimits, build_backend
from berth_shared.backends.cephfs import CephFsBackend
from berth_shared.errors import FailedPrecondition, NotFound
from berth_shared.node import ceph as node
from berth_testing.ceph import CephCluster

MiB = 1 << 20


def _id(prefix: str = "v") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_backend(ceph: CephCluster) -> Iterator[Callable[..., CephFsBackend]]:
    made: list[CephFsBackend] = []

    def make(**extra: Any) -> CephFsBackend:
        backend = build_backend("cephfs", ceph.backend_config("cephfs", **extra))
        assert isinstance(backend, CephFsBackend)
        made.append(backend)
        return backend

    yield make
    for b in made:
        asyncio.run(b.close())


@pytest.fixture
def fs_backend(make_backend: Callable[..., CephFsBackend]) -> CephFsBackend:
    return make_backend()


async def test_volume_lifecycle(fs_backend: CephFsBackend) -> None:
    vid, tenant = _id(), _id("t")
    await fs_backend.create_volume(vid, 64 * MiB, tenant=tenant)
    await fs_backend.create_volume(vid, 64 * MiB, tenant=tenant)  # repeated: nothing doubles
    path = await fs_backend.volume_path(vid)
    assert path.startswith(f"/volumes/berth-{tenant}/{vid}/")
    assert fs_backend.node_context(vid)["path"] == path
    with pytest.raises(FailedPrecondition):
        await fs_backend.create_volume(vid, 32 * MiB, tenant=tenant)

    await fs_backend.expand_volume(vid, 128 * MiB)
    await fs_backend.expand_volume(vid, 96 * MiB)  # never shrinks
    items = {i.id: i for i in await fs_backend.inventory() if i.kind == "volume"}
    assert items[vid].size_bytes == 128 * MiB
    with pytest.raises(NotFound):
        await fs_backend.expand_volume(_id(), MiB)

    cap = await fs_backend.capacity()
    assert cap.total_bytes >= cap.free_bytes > 0
    state = await fs_backend.set_qos(vid, QosLimits(iops=100))
    assert not state.enforced and "no per-subvolume IO limits" in state.detail
    assert items[vid].tenant == tenant and items[vid].created_at is not None

    await fs_backend.delete_volume(vid)
    await fs_backend.delete_volume(vid)
    assert vid not in {i.id for i in await fs_backend.inventory()}


async def test_snapshots_and_clones(fs_backend: CephFsBackend) -> None:
    """Clones are the mgr's asynchronous copies: the call waits for them to complete."""
    src, snap, tenant = _id(), _id("s"), _id("t")
    await fs_backend.create_volume(src, 32 * MiB, tenant=tenant)
    await fs_backend.create_snapshot(snap, src)
    await fs_backend.create_snapshot(snap, src)
    assert ("snapshot", snap) in {(i.kind, i.id) for i in await fs_backend.inventory()}

    from_snap, cloned = _id(), _id()
    await fs_backend.create_volume_from_snapshot(from_snap, snap, 48 * MiB)
    await fs_backend.create_volume_from_snapshot(from_snap, snap, 48 * MiB)
    await fs_backend.clone_volume(cloned, src, 32 * MiB)
    sizes = {i.id: i.size_bytes for i in await fs_backend.inventory() if i.kind == "volume"}
    assert sizes[from_snap] == 48 * MiB and sizes[cloned] == 32 * MiB
    assert not any(i.id.startswith("berth-clone-") for i in await fs_backend.inventory())

    # The source goes, its snapshot stays (and can still be deleted later).
    await fs_backend.delete_volume(src)
    inv = {(i.kind, i.id) for i in await fs_backend.inventory()}
    assert ("snapshot", snap) in inv and ("volume", src) not in inv
    with pytest.raises(NotFound):
        await fs_backend.volume_path(src)
    await fs_backend.delete_snapshot(snap)
    await fs_backend.delete_snapshot(snap)
    assert ("snapshot", snap) not in {(i.kind, i.id) for i in await fs_backend.inventory()}
    for vid in (from_snap, cloned):
        await fs_backend.delete_volume(vid)


async def test_authorize_and_deauthorize(ceph: CephCluster, fs_backend: CephFsBackend) -> None:
    vid = _id()
    await fs_backend.create_volume(vid, 8 * MiB)
    client_id = fs_backend.node_client_id(_id("n"))
    key = await fs_backend.authorize(vid, client_id)
    assert key and len(key) == 40
    caps = ceph.mon_command("auth get", entity="client." + client_id)[0]["caps"]
    assert (await fs_backend.volume_path(vid)) in caps["mds"]
    await fs_backend.deauthorize(vid, client_id)
    await fs_backend.deauthorize(vid, client_id)
    await fs_backend.delete_volume(vid)


def _write_sync(path: Path, data: bytes, timeout: float = 30.0) -> None:
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"write to {path} hung for {timeout}s")
    if error:
        raise error[0]


@pytest.mark.root
async def test_fence_evicts_a_ceph_fuse_node(ceph: CephCluster, fs_backend: CephFsBackend, tmp_path: Path) -> None:
    """Node A mounts its subvolume with ceph-fuse as its own cephx id and writes; the fence
    evicts and blocklists it (A's next write fails); node B mounts and finds A's data."""
    if os.geteuid() != 0:
        pytest.skip("needs root (fuse mounts)")
    if "fuse" not in node.cephfs_methods():
        pytest.skip("needs ceph-fuse and /dev/fuse")
    vid, node_a, node_b = _id(), _id("na"), _id("nb")
    await fs_backend.create_volume(vid, 64 * MiB)
    path = await fs_backend.volume_path(vid)

    def spec_for(node_id: str, key: str) -> node.CephClientSpec:
        client_id = fs_backend.node_client_id(node_id)
        keyring = tmp_path / f"{client_id}.keyring"
        keyring.write_text(f"[client.{client_id}]\n\tkey = {key}\n")
        return node.CephClientSpec(str(ceph.conf), str(keyring), client_id)

    key_a = await fs_backend.authorize(vid, fs_backend.node_client_id(node_a))
    key_b = await fs_backend.authorize(vid, fs_backend.node_client_id(node_b))
    assert key_a and key_b
    mount_a = node.mount_cephfs(spec_for(node_a, key_a), path, tmp_path / "a", method="fuse")
    ceph.on_stop(lambda: node.unmount_cephfs(mount_a, fenced=True))
    try:
        assert mount_a.client_address
        _write_sync(tmp_path / "a" / "data.txt", b"written on node A")
        await fs_backend.record_node_address(vid, node_a, mount_a.client_address)
        sessions = [c for c in await fs_backend.clients() if c.entity_id == fs_backend.node_client_id(node_a)]
        assert [c.address for c in sessions] == [mount_a.client_address]
        assert sessions[0].root == path

        # No address given: the node's cephx id finds its sessions.
        cut = await fs_backend.fence(FenceTarget(node_a, (vid,)))
        assert cut == [f"evict client.{sessions[0].id} {mount_a.client_address}", f"blocklist {mount_a.client_address}"]
        assert await fs_backend.fence(FenceTarget(node_a, (vid,))) == [f"blocklist {mount_a.client_address}"]
        assert not [c for c in await fs_backend.clients() if c.entity_id == fs_backend.node_client_id(node_a)]
        assert mount_a.client_address in await fs_backend.blocklist_entries()
        with pytest.raises(OSError):
            _write_sync(tmp_path / "a" / "late.txt", b"x" * 65536)

        mount_b = node.mount_cephfs(spec_for(node_b, key_b), path, tmp_path / "b", method="fuse")
        try:
            assert (tmp_path / "b" / "data.txt").read_bytes() == b"written on node A"
            assert not (tmp_path / "b" / "late.txt").exists() or (tmp_path / "b" / "late.txt").stat().st_size == 0
            _write_sync(tmp_path / "b" / "from-b.txt", b"node B writes")
        finally:
            node.unmount_cephfs(mount_b)
    finally:
        node.unmount_cephfs(mount_a, fenced=True)
    assert await fs_backend.unfence(FenceTarget(node_a, (vid,))) == [f"blocklist {mount_a.client_address}"]
    assert mount_a.client_address not in await fs_backend.blocklist_entries()
    for n in (node_a, node_b):
        await fs_backend.deauthorize(vid, fs_backend.node_client_id(n))
    await fs_backend.delete_volume(vid)


@pytest.mark.root
async def test_ceph_fuse_leaves_no_admin_socket_behind(
    ceph: CephCluster, fs_backend: CephFsBackend, tmp_path: Path
) -> None:
    """Under a kubelet-long staging path ceph-fuse's admin socket moves to a short name in
    the temporary directory (a socket path over 107 bytes cannot bind), or to the node's
    short work dir when it has one; every unmount,
    clean or fenced (the daemon killed), removes it. The log goes too after a clean
    unmount (with a work dir it is there, not beside the mount point)."""
    if os.geteuid() != 0 or "fuse" not in node.cephfs_methods():
        pytest.skip("needs root, ceph-fuse and /dev/fuse")
    vid, node_id = _id(), _id("na")
    await fs_backend.create_volume(vid, 64 * MiB)
    path = await fs_backend.volume_path(vid)
    client_id = fs_backend.node_client_id(node_id)
    keyring = tmp_path / f"{client_id}.keyring"
    keyring.write_text(f"[client.{client_id}]\n\tkey = {await fs_backend.authorize(vid, client_id)}\n")
    spec = node.CephClientSpec(str(ceph.conf), str(keyring), client_id)
    kubelet = tmp_path / ("plugins-" + "k" * 40) / ("pv-" + "x" * 40)
    for fenced, workdir in ((False, None), (False, tmp_path / "work"), (True, None)):
        target = kubelet / f"globalmount-{fenced}-{workdir is not None}"
        target.parent.mkdir(parents=True, exist_ok=True)
        m = node.mount_cephfs(spec, path, target, workdir=workdir, method="fuse")
        ceph.on_stop(lambda m=m: node.unmount_cephfs(m, fenced=True))  # type: ignore[misc]
        assert m.asok and m.log and os.path.exists(m.asok), m
        assert m.client_address, "the socket bound: the client's address is known"
        if workdir is None:
            assert m.asok.startswith(os.path.join(tempfile.gettempdir(), "berth-cephfs-")), m.asok
        else:
            assert Path(m.asok).parent == Path(m.log).parent == workdir, m
        if fenced:
            await fs_backend.fence(FenceTarget(node_id, (vid,)))
        node.unmount_cephfs(m, fenced=fenced)
        assert not os.path.exists(m.asok)
        assert os.path.exists(m.log) == fenced, "a fenced client's log is kept, a clean one's goes"
    assert sorted(p.name for p in kubelet.iterdir()) == [
        ".globalmount-True-False.ceph-fuse.log",
        "globalmount-False-False",
        "globalmount-False-True",
        "globalmount-True-False",
    ]
    await fs_backend.unfence(FenceTarget(node_id, (vid,)))
    await fs_backend.deauthorize(vid, client_id)
    await fs_backend.delete_volume(vid)


async def test_least_privilege_user(ceph: CephCluster, tmp_path: Path) -> None:
    """The caps the module docstring gives for a production cluster are enough."""
    out = ceph.mon_command(
        "auth get-or-create",
        entity="client.berth-fs-test",
        caps=[
            "mon",
            'allow r, allow command "osd blocklist", allow command "config-key set", '
            'allow command "config-key get", allow command "config-key rm", allow command "auth get-key"',
            "mgr",
            "allow rw",
            "mds",
            "allow *",
        ],
    )
    keyring = tmp_path / "berth.keyring"
    keyring.write_text(f"[client.berth-fs-test]\n\tkey = {out[0]['key']}\n")
    backend = build_backend("cephfs", {"conf": str(ceph.conf), "keyring": str(keyring), "user": "berth-fs-test"})
    assert isinstance(backend, CephFsBackend)
    vid, snap, node_id = _id(), _id("s"), _id("n")
    try:
        await backend.create_volume(vid, 8 * MiB, tenant=_id("t"))
        await backend.create_snapshot(snap, vid)
        assert await backend.authorize(vid, backend.node_client_id(node_id))
        assert backend.node_context(vid)["path"] == await backend.volume_path(vid)
        assert (await backend.capacity()).free_bytes > 0
        target = FenceTarget(node_id, (vid,), ("192.0.2.11:0/8",))
        assert await backend.fence(target) == ["blocklist 192.0.2.11:0/8"]
        assert await backend.unfence(target) == ["blocklist 192.0.2.11:0/8"]
        await backend.deauthorize(vid, backend.node_client_id(node_id))
        await backend.delete_snapshot(snap)
        await backend.delete_volume(vid)
    finally:
        await backend.close()

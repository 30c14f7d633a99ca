"""The RBD backend against a real Ceph (the session's `ceph` fixture), and the
single-writer proof: a fenced node's writes fail while the next node finds its data."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from berth_shared.backends import FenceTarget, QosLimits, build_backend, ceph_bindings, validate_backend_config
from berth_shared.backends.ceph_common import OP_TIMEOUT_S, addr_matches, normalize_addr
from berth_shared.backends.rbd import META_VOLUME, PARTIAL, RbdBackend
from berth_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from berth_shared.node import ceph as node
from berth_shared.node import host, mounts
from berth_testing.ceph import RBD_DATA_POOL, RBD_POOL, CephCluster

MiB = 1 << 20


def _id(prefix: str = "v") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_backend(ceph: CephCluster) -> Iterator[Callable[..., RbdBackend]]:
    made: list[RbdBackend] = []

    def make(**extra: Any) -> RbdBackend:
        backend = build_backend("rbd", ceph.backend_config("rbd", **extra))
        assert isinstance(backend, RbdBackend)
        made.append(backend)
        return backend

    yield make
    for b in made:
        b.conn.close()


@pytest.fixture
def rbd_backend(make_backend: Callable[..., RbdBackend]) -> RbdBackend:
    return make_backend()


def _client(ceph: CephCluster) -> Any:
    """A separate librados client: another "node" with its own address."""
    rados = ceph_bindings.rados()
    c = rados.Rados(conffile=str(ceph.conf), rados_id=ceph.user, conf={"keyring": str(ceph.keyring)})
    c.connect(timeout=20)
    return c


@contextmanager
def _image(ceph: CephCluster, name: str, read_only: bool = True) -> Iterator[Any]:
    # Close the image and its ioctx before the cluster's client goes: a handle destroyed
    # after its client shut down aborts the interpreter at exit.
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, name, read_only=read_only) as img:
        yield img


# -- config (no cluster needed) ------------------------------------------------------------


def test_config_validation() -> None:
    norm = validate_backend_config("rbd", {"conf": "/etc/ceph/ceph.conf", "pool": "ssd", "data_pool": "ec-hdd"})
    assert norm["pool"] == "ssd" and norm["data_pool"] == "ec-hdd" and norm["user"] == "admin"
    assert norm["trash_grace_s"] == 0 and norm["max_clone_depth"] == 8
    cases: list[tuple[dict[str, Any], str]] = [
        ({"pool": "rbd"}, "give 'conf'"),
        ({"conf": "relative.conf", "pool": "rbd"}, "absolute path"),
        ({"conf": "/c", "pool": "bad pool"}, "'pool'"),
        ({"conf": "/c"}, "'pool'"),
        ({"conf": "/c", "pool": "p", "user": "client.berth"}, "'user'"),
        ({"conf": "/c", "pool": "p", "max_clone_depth": 0}, "max_clone_depth"),
    ]
    for bad, words in cases:
        with pytest.raises(InvalidArgument, match=words) as info:
            validate_backend_config("rbd", bad)
        assert info.value.reason == "invalid_backend_config"
    assert validate_backend_config("cephfs", {"mon_host": "10.0.0.1", "keyring": "/k"})["fs_name"] == "cephfs"
    with pytest.raises(InvalidArgument, match="unknown backend kind"):
        validate_backend_config("iscsi", {})


def test_addresses() -> None:
    assert normalize_addr("v1:10.0.0.5:0/1234") == "10.0.0.5:0/1234"
    assert normalize_addr("10.0.0.5") == "10.0.0.5:0/0"  # the whole host
    assert normalize_addr("fd00::1") == "[fd00::1]:0/0"
    assert addr_matches("10.0.0.5:0/99", ["10.0.0.5"]) and not addr_matches("10.0.0.6:0/99", ["10.0.0.5"])
    with pytest.raises(InvalidArgument):
        normalize_addr("node-a")


# -- the backend contract ------------------------------------------------------------------


async def test_every_librados_call_is_bounded(rbd_backend: RbdBackend) -> None:
    # librados' default is to wait forever for an OSD or a monitor; a call stuck that way
    # held a worker thread and the client's shutdown behind it until the process died.
    client = rbd_backend.conn.client()
    for option in ("rados_osd_op_timeout", "rados_mon_op_timeout"):
        assert float(client.conf_get(option)) == OP_TIMEOUT_S, option


async def test_volume_lifecycle(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    vid = _id()
    await rbd_backend.create_volume(vid, 64 * MiB)
    await rbd_backend.create_volume(vid, 64 * MiB)  # repeated: nothing doubles
    info = await rbd_backend.describe_volume(vid)
    assert info.size_bytes == 64 * MiB
    assert {"layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"} <= set(info.features)
    with _image(ceph, vid) as img:
        assert img.metadata_get(META_VOLUME) == vid
    with pytest.raises(FailedPrecondition):
        await rbd_backend.create_volume(vid, 32 * MiB)

    await rbd_backend.expand_volume(vid, 128 * MiB)
    await rbd_backend.expand_volume(vid, 96 * MiB)  # never shrinks
    assert (await rbd_backend.describe_volume(vid)).size_bytes == 128 * MiB
    with pytest.raises(NotFound):
        await rbd_backend.expand_volume(_id(), MiB)

    items = {i.id: i for i in await rbd_backend.inventory() if i.kind == "volume"}
    assert items[vid].size_bytes == 128 * MiB
    ctx = rbd_backend.node_context(vid)
    assert ctx["pool"] == RBD_POOL and ctx["image"] == vid and "keyring" not in ctx

    await rbd_backend.delete_volume(vid)
    await rbd_backend.delete_volume(vid)
    assert vid not in {i.id for i in await rbd_backend.inventory()}


async def test_crash_mid_create_leaves_no_untagged_image(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    """A create that died after the image was made but before it was tagged and renamed:
    the partial image shows in the inventory (so the watcher can reclaim it) and the
    retry finishes the job."""
    rbd = ceph_bindings.rbd()
    vid = _id()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx:
        rbd.RBD().create(ioctx, vid + PARTIAL, 8 * MiB, old_format=False)
    assert vid in {i.id for i in await rbd_backend.inventory()}
    await rbd_backend.create_volume(vid, 16 * MiB)
    with ceph.client().open_ioctx(RBD_POOL) as ioctx:
        names = set(rbd.RBD().list(ioctx))
    assert vid in names and vid + PARTIAL not in names
    # ...and a delete of a record that never completed removes the partial too.
    with ceph.client().open_ioctx(RBD_POOL) as ioctx:
        rbd.RBD().create(ioctx, vid + PARTIAL, 8 * MiB, old_format=False)
    await rbd_backend.delete_volume(vid)
    assert vid not in {i.id for i in await rbd_backend.inventory()}


async def test_snapshots_clones_and_depth(ceph: CephCluster, make_backend: Callable[..., RbdBackend]) -> None:
    backend = make_backend(max_clone_depth=2)
    src, snap = _id(), _id("s")
    await backend.create_volume(src, 16 * MiB)
    with _image(ceph, src, read_only=False) as img:
        img.write(b"berth-data".ljust(4096, b"\0"), 0)
    await backend.create_snapshot(snap, src)
    await backend.create_snapshot(snap, src)  # idempotent
    with _image(ceph, src) as img:
        assert img.is_protected_snap(snap)

    # From a snapshot, bigger than the source; then a chain of volume clones.
    v1 = _id()
    await backend.create_volume_from_snapshot(v1, snap, 32 * MiB)
    await backend.create_volume_from_snapshot(v1, snap, 32 * MiB)
    chain = [v1]
    for _ in range(3):
        nxt = _id()
        await backend.clone_volume(nxt, chain[-1], 32 * MiB)
        chain.append(nxt)
    for vid in chain:
        with _image(ceph, vid) as img:
            assert img.read(0, 10) == b"berth-data"
            assert img.size() == 32 * MiB
    assert (await backend.describe_volume(v1)).parent == src
    # Depths 1 and 2 stay copy-on-write; depth 3 passed the limit and was flattened, so the
    # next clone hangs from it at depth 1 again.
    assert (await backend.describe_volume(chain[1])).parent == v1
    assert (await backend.describe_volume(chain[2])).parent is None
    assert (await backend.describe_volume(chain[3])).parent == chain[2]

    inv = {(i.kind, i.id) for i in await backend.inventory()}
    assert ("snapshot", snap) in inv
    assert not any(i.startswith("berth-clone-") for _, i in inv)  # hidden clone snapshots

    # Deleting the source keeps its snapshot alive (the image waits in the trash)...
    await backend.delete_volume(src)
    assert ("snapshot", snap) in {(i.kind, i.id) for i in await backend.inventory()}
    late = _id()
    await backend.create_volume_from_snapshot(late, snap, 16 * MiB)
    with _image(ceph, late) as img:
        assert img.read(0, 10) == b"berth-data"
    # ...and deleting the snapshot flattens its clones and purges the trashed image.
    await backend.delete_snapshot(snap)
    await backend.delete_snapshot(snap)
    with _image(ceph, v1) as img:
        assert img.read(0, 10) == b"berth-data"
    assert (await backend.describe_volume(v1)).parent is None
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx:
        assert not [e for e in rbd.RBD().trash_list(ioctx) if e["name"] == src]
    with pytest.raises(NotFound):
        await backend.create_volume_from_snapshot(_id(), snap, MiB)

    for vid in reversed([*chain, late]):
        await backend.delete_volume(vid)
    with ceph.client().open_ioctx(RBD_POOL) as ioctx:
        assert not (set(rbd.RBD().list(ioctx)) & {*chain, late, src})
        assert not list(rbd.RBD().trash_list(ioctx))


async def test_delete_in_use_is_a_clear_error(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    rbd = ceph_bindings.rbd()
    vid = _id()
    await rbd_backend.create_volume(vid, 8 * MiB)
    other = _client(ceph)
    try:
        # A read-write open is a watcher, like a mapped device.
        with other.open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, vid):
            with pytest.raises(FailedPrecondition) as info:
                await rbd_backend.delete_volume(vid)
            assert info.value.reason == "volume_in_use"
            assert info.value.extra["watchers"] == [other.get_addrs()]
    finally:
        other.shutdown()
    await rbd_backend.delete_volume(vid)


async def test_trash_grace_period(ceph: CephCluster, make_backend: Callable[..., RbdBackend]) -> None:
    backend = make_backend(trash_grace_s=3600)
    rbd = ceph_bindings.rbd()
    vid = _id()
    await backend.create_volume(vid, 8 * MiB)
    await backend.delete_volume(vid)
    await backend.delete_volume(vid)
    with ceph.client().open_ioctx(RBD_POOL) as ioctx:
        trashed = [e for e in rbd.RBD().trash_list(ioctx) if e["name"] == vid]
        assert len(trashed) == 1
        assert await backend.purge_trash() == 0  # still within its grace period
        rbd.RBD().trash_remove(ioctx, trashed[0]["id"], force=True)


async def test_qos_visible_on_the_image(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    vid = _id()
    await rbd_backend.create_volume(vid, 8 * MiB)
    state = await rbd_backend.set_qos(vid, QosLimits(iops=500, bps=50 * MiB))
    assert state.enforced and state.limits == QosLimits(iops=500, bps=50 * MiB)
    with _image(ceph, vid) as img:
        conf = {c["name"]: c for c in img.config_list()}
    assert conf["rbd_qos_iops_limit"]["value"] == "500"
    assert conf["rbd_qos_bps_limit"]["value"] == str(50 * MiB)
    assert conf["rbd_qos_iops_limit"]["source"] == ceph_bindings.rbd().RBD_CONFIG_SOURCE_IMAGE
    assert (await rbd_backend.describe_volume(vid)).qos == {"rbd_qos_iops_limit": 500, "rbd_qos_bps_limit": 50 * MiB}
    await rbd_backend.set_qos(vid, QosLimits())
    await rbd_backend.set_qos(vid, QosLimits())
    assert (await rbd_backend.describe_volume(vid)).qos == {}
    await rbd_backend.delete_volume(vid)


async def test_capacity_and_data_pool(ceph: CephCluster, make_backend: Callable[..., RbdBackend]) -> None:
    backend = make_backend(data_pool=RBD_DATA_POOL)
    cap = await backend.capacity()
    assert cap.total_bytes >= cap.free_bytes > 0
    vid = _id()
    await backend.create_volume(vid, 8 * MiB)
    with _image(ceph, vid) as img:
        assert img.data_pool_id() == ceph.client().pool_lookup(RBD_DATA_POOL)
    await backend.delete_volume(vid)


# -- fencing -------------------------------------------------------------------------------


async def test_fence_blocklists_the_recorded_client(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    """Node A (its own librados client) holds the exclusive lock and writes; after the fence
    its next write fails with ESHUTDOWN (108) and node B takes over with A's data intact."""
    rados, rbd = ceph_bindings.rados(), ceph_bindings.rbd()
    vid, node_a = _id(), _id("node-")
    await rbd_backend.create_volume(vid, 8 * MiB)
    a, b = _client(ceph), _client(ceph)
    addr_a = str(a.get_addrs())
    io_a, io_b = a.open_ioctx(RBD_POOL), b.open_ioctx(RBD_POOL)
    img_a = rbd.Image(io_a, vid)
    try:
        img_a.write(b"written by A".ljust(4096, b"\0"), 0)
        img_a.flush()
        assert img_a.is_exclusive_lock_owner()
        await rbd_backend.record_node_address(vid, node_a, addr_a)
        assert (await rbd_backend.describe_volume(vid)).node_addresses == {node_a: addr_a}
        # A fence of another node leaves A's lock alone but says it saw one it does not cover.
        other = FenceTarget(_id("node-"), (vid,), ("192.0.2.20:0/1",))
        assert await rbd_backend.fence(other) == ["blocklist 192.0.2.20:0/1", f"uncovered-lock {vid} {addr_a}"]
        await rbd_backend.unfence(other)
        img_a.write(b"written by A".ljust(4096, b"\0"), 0)  # still the owner

        # No address given: the fence finds it in the image's metadata.
        cut = await rbd_backend.fence(FenceTarget(node_a, (vid,)))
        assert cut == [f"blocklist {addr_a}", f"lock {vid} {addr_a}"]
        assert await rbd_backend.fence(FenceTarget(node_a, (vid,))) == [f"blocklist {addr_a}"]  # idempotent
        assert addr_a in await rbd_backend.blocklist_entries()
        with pytest.raises((rados.Error, rbd.Error)) as info:
            img_a.write(b"late write from A".ljust(4096, b"\0"), 4096)
            img_a.flush()
        assert info.value.errno == errno.ESHUTDOWN

        with rbd.Image(io_b, vid) as img_b:
            img_b.write(b"B".ljust(4096, b"\0"), 8192)  # the lock was broken: no wait for A
            assert img_b.is_exclusive_lock_owner()
            assert img_b.read(0, 12) == b"written by A"
            assert img_b.read(4096, 4) == b"\0\0\0\0"
    finally:
        with suppress(Exception):  # A is cut off: closing may fail, which is the point
            img_a.close()
        io_a.close()
        io_b.close()
        a.shutdown()
        b.shutdown()
    assert await rbd_backend.unfence(FenceTarget(node_a, (vid,))) == [f"blocklist {addr_a}"]
    assert await rbd_backend.unfence(FenceTarget(node_a, (vid,))) == []
    assert addr_a not in await rbd_backend.blocklist_entries()
    assert (await rbd_backend.describe_volume(vid)).node_addresses == {}
    await rbd_backend.delete_volume(vid)


def _can_attach_with_fuse() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts)"
    if "fuse" not in node.rbd_methods():
        return "needs rbd-fuse, /dev/fuse and losetup"
    if not shutil.which("mkfs.ext4"):
        return "needs mkfs.ext4"
    return None


def _write_sync(path: Path, data: bytes, timeout: float = 30.0) -> None:
    """Write and fsync in a thread: a fenced client must fail, and must not hang the test."""
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
async def test_single_writer_through_rbd_fuse_and_loop(
    ceph: CephCluster, rbd_backend: RbdBackend, tmp_path: Path
) -> None:
    """The users' proof: ext4 on node A through rbd-fuse + loop, A fenced, A's next write
    fails, node B attaches the same image and finds A's data."""
    reason = _can_attach_with_fuse()
    if reason:
        pytest.skip(reason)
    vid, node_a = _id(), _id("node-")
    await rbd_backend.create_volume(vid, 64 * MiB)
    spec = node.CephClientSpec(str(ceph.conf), str(ceph.keyring), ceph.user)
    att_a = node.attach_rbd(spec, RBD_POOL, vid, tmp_path / "a")
    mnt_a, mnt_b = tmp_path / "a" / "mnt", tmp_path / "b" / "mnt"
    ceph.on_stop(lambda: node.detach_rbd(att_a, str(mnt_a), fenced=True))
    try:
        assert att_a.method == "fuse" and att_a.device.startswith("/dev/loop") and att_a.client_address
        assert _format_and_mount(att_a.device, mnt_a) is True
        _write_sync(mnt_a / "data.txt", b"written on node A")
        await rbd_backend.record_node_address(vid, node_a, att_a.client_address)

        # The attacher passes the address the node reported in its heartbeat.
        cut = await rbd_backend.fence(FenceTarget(node_a, (vid,), (att_a.client_address,)))
        assert f"blocklist {att_a.client_address}" in cut
        with pytest.raises(OSError):
            _write_sync(mnt_a / "late.txt", b"x" * 65536)

        att_b = node.attach_rbd(spec, RBD_POOL, vid, tmp_path / "b")
        try:
            assert att_b.client_address != att_a.client_address
            assert _format_and_mount(att_b.device, mnt_b) is False  # A's file system, not a new one
            assert (mnt_b / "data.txt").read_bytes() == b"written on node A"
            _write_sync(mnt_b / "from-b.txt", b"node B writes")
        finally:
            node.detach_rbd(att_b, str(mnt_b))
    finally:
        node.detach_rbd(att_a, str(mnt_a), fenced=True)
    assert not node.is_mounted(str(mnt_a)) and not node.is_mounted(att_a.fuse_dir or "/nonexistent")
    await rbd_backend.unfence(FenceTarget(node_a, (vid,)))
    await rbd_backend.delete_volume(vid)


async def test_least_privilege_user(ceph: CephCluster, tmp_path: Path) -> None:
    """The caps the module docstring gives for a production cluster are enough."""
    out = ceph.mon_command(
        "auth get-or-create",
        entity="client.berth-rbd-test",
        caps=[
            "mon",
            'profile rbd, allow command "osd blocklist", allow command "osd dump", allow command "df"',
            "osd",
            f"profile rbd pool={RBD_POOL}, profile rbd pool={RBD_DATA_POOL}",
            "mgr",
            f"profile rbd pool={RBD_POOL}",
        ],
    )
    keyring = tmp_path / "berth.keyring"
    keyring.write_text(f"[client.berth-rbd-test]\n\tkey = {out[0]['key']}\n")
    cfg = {"conf": str(ceph.conf), "keyring": str(keyring), "user": "berth-rbd-test", "pool": RBD_POOL}
    backend = build_backend("rbd", {**cfg, "data_pool": RBD_DATA_POOL})
    assert isinstance(backend, RbdBackend)
    vid, clone, snap = _id(), _id(), _id("s")
    try:
        await backend.create_volume(vid, 8 * MiB)
        await backend.create_snapshot(snap, vid)
        await backend.clone_volume(clone, vid, 8 * MiB)
        await backend.set_qos(vid, QosLimits(iops=100))
        assert (await backend.capacity()).free_bytes > 0
        assert {vid, clone, snap} <= {i.id for i in await backend.inventory()}
        target = FenceTarget(_id("node-"), (vid,), ("192.0.2.10:0/7",))
        assert await backend.fence(target) == ["blocklist 192.0.2.10:0/7"]
        assert await backend.unfence(target) == ["blocklist 192.0.2.10:0/7"]
        for v in (clone, vid):
            await backend.delete_volume(v)
        await backend.delete_snapshot(snap)
    finally:
        await backend.close()


@pytest.mark.root
async def test_fenced_detach_does_not_hang_on_a_wedged_rbd_fuse(
    ceph: CephCluster, rbd_backend: RbdBackend, tmp_path: Path
) -> None:
    """A blocklisted rbd-fuse stops answering: a `stat` of its image file hangs in the
    kernel (D state), and so would every later request on the mount, the teardown's own
    included. The fenced detach kills the daemon first, which aborts the FUSE connection:
    it completes at once and the stuck caller gets an error instead of hanging forever."""
    reason = _can_attach_with_fuse()
    if reason:
        pytest.skip(reason)
    vid, node_id = _id(), _id("node-")
    await rbd_backend.create_volume(vid, 64 * MiB)
    spec = node.CephClientSpec(str(ceph.conf), str(ceph.keyring), ceph.user)
    att = node.attach_rbd(spec, RBD_POOL, vid, tmp_path)
    mnt = tmp_path / "mnt"
    ceph.on_stop(lambda: node.detach_rbd(att, str(mnt), fenced=True))
    _format_and_mount(att.device, mnt)
    _write_sync(mnt / "data.txt", b"before the fence")
    assert att.client_address and att.fuse_dir
    await rbd_backend.fence(FenceTarget(node_id, (vid,), (att.client_address,)))

    stat_result: list[object] = []

    def stat_image() -> None:
        try:
            stat_result.append(os.stat(Path(att.fuse_dir or "/") / vid))
        except OSError as exc:
            stat_result.append(exc)

    # Past the kernel's FUSE attribute cache (1 s), so that the stat reaches rbd-fuse.
    await asyncio.sleep(1.5)
    stuck = threading.Thread(target=stat_image, daemon=True)
    stuck.start()
    stuck.join(2.0)
    assert stuck.is_alive(), f"expected the fenced rbd-fuse to leave the stat unanswered: {stat_result}"

    done = threading.Thread(target=lambda: node.detach_rbd(att, str(mnt), fenced=True), daemon=True)
    started = time.monotonic()
    done.start()
    done.join(30.0)
    assert not done.is_alive(), "the fenced detach hung"
    assert time.monotonic() - started < 15.0
    stuck.join(10.0)
    assert not stuck.is_alive() and isinstance(stat_result[0], OSError), stat_result
    assert not {str(mnt), att.fuse_dir} & _mount_points(), "file system and fuse mount are gone"
    assert not _loops_over(att.fuse_dir)
    await rbd_backend.unfence(FenceTarget(node_id, (vid,)))
    await rbd_backend.delete_volume(vid)


def _format_and_mount(device: str, target: Path) -> bool:
    """ext4 on the device unless it has a file system, mounted; whether it formatted."""
    formatted = host.format_if_blank(device, "ext4")
    mounts.mount(device, str(target), fstype="ext4")
    return formatted


def _mount_points() -> set[str]:
    """From the mount table: a stat of a dead fuse mount fails, which would hide it."""
    return {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if line}


def _loops_over(directory: str) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=10, check=False).stdout
    return [line for line in out.splitlines() if directory in line]

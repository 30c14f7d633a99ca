"""What the watcher asks of the Ceph backends, against the real Ceph fixture: inventory
details (creation time, watchers, sessions), quarantine / restore / purge, QoS read back
for drift, and per-image IO counters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from berth_shared.backends import QosLimits, build_backend, ceph_bindings
from berth_shared.backends.cephfs import CephFsBackend
from berth_shared.backends.rbd import RbdBackend
from berth_shared.errors import FailedPrecondition, NotFound
from berth_testing import eventually
from berth_testing.ceph import RBD_POOL, CephCluster

MiB = 1 << 20


def _id(prefix: str = "v") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rbd_backend(ceph: CephCluster) -> Iterator[RbdBackend]:
    backend = build_backend("rbd", ceph.backend_config("rbd"))
    assert isinstance(backend, RbdBackend)
    yield backend
    backend.conn.close()


@pytest.fixture
def fs_backend(ceph: CephCluster) -> Iterator[CephFsBackend]:
    backend = build_backend("cephfs", ceph.backend_config("cephfs"))
    assert isinstance(backend, CephFsBackend)
    yield backend
    backend.conn.close()


def _other_client(ceph: CephCluster) -> Any:
    rados = ceph_bindings.rados()
    c = rados.Rados(conffile=str(ceph.conf), rados_id=ceph.user, conf={"keyring": str(ceph.keyring)})
    c.connect(timeout=20)
    return c


async def test_rbd_inventory_shows_creation_and_watchers(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    vid = _id()
    await rbd_backend.create_volume(vid, 8 * MiB)
    other = _other_client(ceph)
    rbd = ceph_bindings.rbd()
    try:
        with other.open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, vid):
            item = next(i for i in await rbd_backend.inventory() if i.id == vid)
            assert item.users == (other.get_addrs(),)
            assert item.created_at is not None and not item.partial
            with pytest.raises(FailedPrecondition) as exc:
                await rbd_backend.quarantine("volume", vid)
            assert exc.value.reason == "volume_in_use"
    finally:
        other.shutdown()
    await rbd_backend.delete_volume(vid)


async def test_rbd_quarantine_restore_purge(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    vid, snap = _id(), _id("s")
    await rbd_backend.create_volume(vid, 8 * MiB)
    await rbd_backend.create_snapshot(snap, vid)

    await rbd_backend.quarantine("snapshot", snap)
    await rbd_backend.quarantine("snapshot", snap)  # idempotent
    ids = {(i.kind, i.id) for i in await rbd_backend.inventory()}
    assert ("snapshot", snap) not in ids and ("volume", vid) in ids
    await rbd_backend.restore("snapshot", snap)
    assert ("snapshot", snap) in {(i.kind, i.id) for i in await rbd_backend.inventory()}
    await rbd_backend.delete_snapshot(snap)

    await rbd_backend.quarantine("volume", vid)
    await rbd_backend.quarantine("volume", vid)
    assert vid not in {i.id for i in await rbd_backend.inventory()}
    assert [t.id for t in await rbd_backend.trash() if t.kind == "volume" and t.id == vid] == [vid]
    # The provisioner's trash purge leaves the watcher's quarantine alone.
    await rbd_backend.purge_trash()
    assert vid in {t.id for t in await rbd_backend.trash()}

    await rbd_backend.restore("volume", vid)
    await rbd_backend.restore("volume", vid)
    assert vid in {i.id for i in await rbd_backend.inventory()}
    assert vid not in {t.id for t in await rbd_backend.trash()}

    await rbd_backend.quarantine("volume", vid)
    await rbd_backend.purge("volume", vid)
    await rbd_backend.purge("volume", vid)
    assert vid not in {t.id for t in await rbd_backend.trash()}
    with pytest.raises(NotFound):
        await rbd_backend.restore("volume", vid)
    with pytest.raises(NotFound):
        await rbd_backend.quarantine("volume", vid)


async def test_rbd_qos_read_back_and_drift(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    vid = _id()
    await rbd_backend.create_volume(vid, 8 * MiB)
    wanted = QosLimits(read_iops=300, write_iops=100, bps=20 * MiB)
    state = await rbd_backend.set_qos(vid, wanted)
    assert state.enforced and state.limits == wanted
    # Someone changes a limit by hand (`rbd config image set`): the watcher sees the drift.
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, vid) as img:
        img.config_set("rbd_qos_write_iops_limit", "5000")
    assert (await rbd_backend.get_qos(vid)).limits == QosLimits(read_iops=300, write_iops=5000, bps=20 * MiB)
    assert (await rbd_backend.set_qos(vid, QosLimits())).limits == QosLimits()
    await rbd_backend.delete_volume(vid)


async def test_rbd_io_counters(ceph: CephCluster, rbd_backend: RbdBackend) -> None:
    vid = _id()
    await rbd_backend.create_volume(vid, 8 * MiB)
    await rbd_backend.io_counters()  # the first call starts the mgr's perf query
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx, rbd.Image(ioctx, vid) as img:
        for i in range(16):
            img.write(b"x" * 65536, i * 65536)
    # The OSDs report to the mgr every few seconds: wait for the counts to arrive.
    counters = await eventually(
        lambda: rbd_backend.io_counters(),
        lambda found: vid in found and found[vid].write_ops >= 16,
        within=30,
        every=0.5,
        what=f"mgr perf counters of {vid}",
    )
    assert counters[vid].write_bytes >= 16 * 65536
    await rbd_backend.delete_volume(vid)


async def test_cephfs_quarantine_revokes_and_restores_access(fs_backend: CephFsBackend) -> None:
    vid, tenant = _id(), _id("t")
    await fs_backend.create_volume(vid, 16 * MiB, tenant=tenant)
    client_id = fs_backend.node_client_id(_id("node-"))
    await fs_backend.authorize(vid, client_id)

    await fs_backend.quarantine("volume", vid)
    await fs_backend.quarantine("volume", vid)
    assert vid not in {i.id for i in await fs_backend.inventory()}
    assert vid in {t.id for t in await fs_backend.trash()}
    group = fs_backend.group_for(tenant)
    listed = fs_backend._mgr("fs subvolume authorized_list", sub_name=vid, group_name=group) or []
    assert listed == [], "a quarantined subvolume keeps its data but nobody's access"

    await fs_backend.restore("volume", vid)
    await fs_backend.restore("volume", vid)
    listed = fs_backend._mgr("fs subvolume authorized_list", sub_name=vid, group_name=group) or []
    assert listed == [{client_id: "rw"}]
    assert vid in {i.id for i in await fs_backend.inventory()}

    await fs_backend.quarantine("volume", vid)
    await fs_backend.purge("volume", vid)
    await fs_backend.purge("volume", vid)
    assert vid not in {t.id for t in await fs_backend.trash()}
    assert vid not in {i.id for i in await fs_backend.inventory()}
    with pytest.raises(NotFound):
        await fs_backend.restore("volume", vid)

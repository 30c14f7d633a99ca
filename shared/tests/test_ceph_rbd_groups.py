"""RBD group snapshots against a real Ceph (the session's `ceph` fixture): one cut across
images through `rbd.Group`, with a writer holding an image's exclusive lock meanwhile;
members restored as copies; crash leftovers completed; nothing left after the delete."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from berth_shared.backends import BackendError, build_backend, ceph_bindings
from berth_shared.backends.rbd import RbdBackend
from berth_shared.errors import FailedPrecondition
from berth_testing.ceph import RBD_POOL, CephCluster

MiB = 1 << 20


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def backend(ceph: CephCluster) -> Iterator[RbdBackend]:
    b = build_backend("rbd", ceph.backend_config("rbd"))
    assert isinstance(b, RbdBackend)
    yield b
    b.conn.close()


def _pool(ceph: CephCluster) -> Any:
    return ceph.client().open_ioctx(RBD_POOL)


def _write(ceph: CephCluster, name: str, data: bytes) -> None:
    rbd = ceph_bindings.rbd()
    with _pool(ceph) as ioctx, rbd.Image(ioctx, name) as image:
        image.write(data, 0)


def _read(ceph: CephCluster, name: str, size: int = 2) -> bytes:
    rbd = ceph_bindings.rbd()
    with _pool(ceph) as ioctx, rbd.Image(ioctx, name, read_only=True) as image:
        return bytes(image.read(0, size))


def _snaps_and_group(ceph: CephCluster, name: str) -> tuple[list[str], str]:
    rbd = ceph_bindings.rbd()
    with _pool(ceph) as ioctx, rbd.Image(ioctx, name, read_only=True) as image:
        return [str(s["name"]) for s in image.list_snaps()], str(image.group()["name"])


def _writer(ceph: CephCluster, name: str) -> tuple[Any, Any, Any]:
    """Another client (a node) with the image open and its exclusive lock taken."""
    rados, rbd = ceph_bindings.rados(), ceph_bindings.rbd()
    client = rados.Rados(conffile=str(ceph.conf), rados_id=ceph.user, conf={"keyring": str(ceph.keyring)})
    client.connect(timeout=20)
    ioctx = client.open_ioctx(RBD_POOL)
    image = rbd.Image(ioctx, name)
    image.write(b"A1", 0)
    assert list(image.lock_get_owners())
    return client, ioctx, image


async def test_group_snapshot_is_one_cut_restored_as_copies(ceph: CephCluster, backend: RbdBackend) -> None:
    rbd = ceph_bindings.rbd()
    va, vb = _id("va"), _id("vb")
    for vid in (va, vb):
        await backend.create_volume(vid, 16 * MiB)
    _write(ceph, vb, b"B1")
    gsid, ma, mb = _id("gs"), _id("ma"), _id("mb")
    members = {ma: va, mb: vb}
    client, ioctx, image = _writer(ceph, va)
    try:
        await backend.create_group_snapshot(gsid, members)
        image.write(b"A2", 0)  # after the cut: not in it
    finally:
        image.close()
        ioctx.close()
        client.shutdown()
    _write(ceph, vb, b"B2")
    await backend.create_group_snapshot(gsid, members)  # repeated: the same cut
    for vid in (va, vb):
        snaps, group = _snaps_and_group(ceph, vid)
        assert len(snaps) == 1 and group == ""  # one member snapshot; free for the next group

    restored = {m: _id("vr") for m in members}
    for member, new in restored.items():
        await backend.create_volume_from_snapshot(new, member, 16 * MiB)
    assert [_read(ceph, restored[m]) for m in (ma, mb)] == [b"A1", b"B1"]
    snapshots = {i.id for i in await backend.inventory() if i.kind == "snapshot"}
    assert {ma, mb} <= snapshots and not any(s.startswith(".group") for s in snapshots)
    with pytest.raises(FailedPrecondition, match="member of group snapshot"):
        await backend.delete_snapshot(ma)

    # The same volumes in the next group snapshot while the first one lives.
    second = {_id("ma"): va, _id("mb"): vb}
    gs2 = _id("gs")
    await backend.create_group_snapshot(gs2, second)
    for gs, ms in ((gsid, members), (gs2, second)):
        for _ in range(2):  # idempotent
            await backend.delete_group_snapshot(gs, ms)
    for vid in (va, vb):
        assert _snaps_and_group(ceph, vid) == ([], "")
    with _pool(ceph) as pool:
        assert not {gsid, gs2} & set(rbd.RBD().group_list(pool))
    assert backend.index.get("gsnap." + gsid) is None and backend.index.get("snap." + ma) is None
    assert [_read(ceph, restored[m]) for m in (ma, mb)] == [b"A1", b"B1"]  # copies outlive the members


async def test_a_retry_completes_what_a_crash_left(ceph: CephCluster, backend: RbdBackend) -> None:
    rbd = ceph_bindings.rbd()
    va, vb = _id("va"), _id("vb")
    for vid in (va, vb):
        await backend.create_volume(vid, 16 * MiB)
    gsid = _id("gs")
    members = {_id("ma"): va, _id("mb"): vb}
    # Died between joining the images to the group and cutting: the retry cuts once.
    with _pool(ceph) as ioctx:
        rbd.RBD().group_create(ioctx, gsid)
        rbd.Group(ioctx, gsid).add_image(ioctx, va)
    await backend.create_group_snapshot(gsid, members)
    assert [len(_snaps_and_group(ceph, v)[0]) for v in (va, vb)] == [1, 1]
    assert [_snaps_and_group(ceph, v)[1] for v in (va, vb)] == ["", ""]

    # An image another group holds (another cut, or someone's own RBD group) is retried.
    other = _id("other")
    with _pool(ceph) as ioctx:
        rbd.RBD().group_create(ioctx, other)
        rbd.Group(ioctx, other).add_image(ioctx, vb)
    refused, refused_members = _id("gs"), {_id("m"): va, _id("m"): vb}
    with pytest.raises(BackendError, match=f"in rbd group '{other}'"):
        await backend.create_group_snapshot(refused, refused_members)
    assert _snaps_and_group(ceph, va)[1] == ""  # left again at once: not held out of other cuts
    with _pool(ceph) as ioctx:
        rbd.Group(ioctx, other).remove_image(ioctx, vb)
        rbd.RBD().group_remove(ioctx, other)
    for gs, ms in ((refused, refused_members), (gsid, members)):  # the refused one rolled back as the op would
        await backend.delete_group_snapshot(gs, ms)
    assert [_snaps_and_group(ceph, v) for v in (va, vb)] == [([], ""), ([], "")]
    with _pool(ceph) as ioctx:
        assert not {gsid, refused} & set(rbd.RBD().group_list(ioctx))

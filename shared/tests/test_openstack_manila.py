"""The Manila backend's contract against a real Manila (CephFS driver on the session's real
Ceph) and a real Keystone: shares are checked as CephFS subvolumes, access rules by
mounting the share with ceph-fuse as the node's own cephx id."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from berth_shared.backends import FenceTarget, QosLimits, build_backend, validate_backend_config
from berth_shared.backends.manila import NODE_CLIENT_PREFIX, ManilaBackend
from berth_shared.backends.openstack_common import GIB
from berth_shared.errors import InvalidArgument, NotFound
from berth_shared.node import ceph as node
from berth_shared.node import staging
from berth_testing.openstack import OpenStack


def _id(prefix: str = "v") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make(openstack: OpenStack) -> AsyncIterator[Callable[..., ManilaBackend]]:
    made: list[ManilaBackend] = []

    def make(**extra: Any) -> ManilaBackend:
        backend = build_backend("manila", openstack.manila_config(**extra))
        assert isinstance(backend, ManilaBackend)
        made.append(backend)
        return backend

    yield make
    for b in made:
        await b.close()


def _subvolume_bytes(openstack: OpenStack, path: str) -> int:
    """The quota CephFS enforces on the share's directory, read from Ceph."""
    group, name = path.split("/")[2], path.split("/")[3]
    cmd = {"prefix": "fs subvolume info", "vol_name": "cephfs", "sub_name": name, "format": "json"}
    if group != "_nogroup":
        cmd["group_name"] = group
    ret, out, err = openstack.ceph.client().mgr_command(json.dumps(cmd), b"", timeout=30)
    assert ret == 0, err
    return int(json.loads(out)["bytes_quota"])


def test_config_validation() -> None:
    norm = validate_backend_config("manila", {"cloud": "prod", "share_type": "cephfs", "region": "az1"})
    assert norm["share_type"] == "cephfs" and norm["region"] == "az1"
    with pytest.raises(InvalidArgument, match="'share_type'"):
        validate_backend_config("manila", {"cloud": "prod"})


async def test_share_lifecycle_is_a_real_subvolume(openstack: OpenStack, make: Callable[..., ManilaBackend]) -> None:
    b = make()
    vid, sid, from_snap, clone = _id(), _id("s"), _id(), _id()
    await b.create_volume(vid, GIB, tenant="team-a")
    await b.create_volume(vid, GIB, tenant="team-a")  # a retry adopts
    mons, path = await b.export_location(vid)
    assert mons and path.startswith("/volumes/")
    assert _subvolume_bytes(openstack, path) == GIB
    await b.expand_volume(vid, 2 * GIB)
    assert _subvolume_bytes(openstack, path) == 2 * GIB

    await b.create_snapshot(sid, vid)
    await b.create_snapshot(sid, vid)
    await b.create_volume_from_snapshot(from_snap, sid, 2 * GIB)
    await b.clone_volume(clone, vid, 3 * GIB)
    assert _subvolume_bytes(openstack, (await b.export_location(clone))[1]) == 3 * GIB
    inv = {(i.kind, i.id): i.size_bytes for i in await b.inventory()}
    assert inv[("volume", vid)] == 2 * GIB and ("snapshot", sid) in inv
    assert ("volume", clone) in inv and ("snapshot", f"clone-{clone}") not in inv  # the hidden one is gone

    cap = await b.capacity()
    assert 0 < cap.free_bytes <= cap.total_bytes
    assert not (await b.set_qos(vid, QosLimits(iops=100))).enforced
    with pytest.raises(NotFound):
        await b.expand_volume(_id(), GIB)

    for v in (from_snap, clone):
        await b.delete_volume(v)
    await b.delete_snapshot(sid)
    await b.delete_volume(vid)
    await b.delete_volume(vid)  # gone already: success
    assert not {i.id for i in await b.inventory()} & {vid, sid, from_snap, clone}


async def test_access_rule_mount_and_fence(
    openstack: OpenStack, make: Callable[..., ManilaBackend], tmp_path: Path
) -> None:
    """attach() answers only once the node's cephx rule is active: the node mounts at once
    with the key Manila made; the fence evicts it (its writes fail), node B goes on."""
    if os.geteuid() != 0:
        pytest.skip("needs root (fuse mounts)")
    if "fuse" not in node.cephfs_methods():
        pytest.skip("needs ceph-fuse and /dev/fuse")
    b = make()
    vid, node_a, node_b = _id(), _id("na"), _id("nb")
    await b.create_volume(vid, GIB)
    ctx_a = await b.attach(vid, node_a, {})
    rules = await b.cloud.call("rules", lambda c: list(c.shared_file_system.access_rules(b._find_share(c, vid))))
    assert {(r.access_to, r.state) for r in rules} == {(NODE_CLIENT_PREFIX + node_a, "active")}

    def spec_for(node_id: str, key: str) -> node.CephClientSpec:
        client = NODE_CLIENT_PREFIX + node_id
        keyring = tmp_path / f"{client}.keyring"
        keyring.write_text(f"[client.{client}]\n\tkey = {key}\n")
        return node.CephClientSpec(str(openstack.ceph.conf), str(keyring), client)

    key_a = await b.authorize(vid, NODE_CLIENT_PREFIX + node_a)  # idempotent: the same key
    # Node A stages the share's publish context through the node's one staging path.
    (tmp_path / "a").mkdir()
    req = staging.StageRequest(
        vid,
        {**ctx_a, "backend": "manila"},
        node_a,
        str(tmp_path / "a"),
        tmp_path / "wa",
        identity=spec_for(node_a, key_a),
    )
    staged_a = await staging.stage(req)
    openstack.ceph.on_stop(lambda: node.sweep(openstack.ceph.conf))
    try:
        assert staged_a.backend == "cephfs" and staged_a.source == ctx_a["path"]
        (tmp_path / "a" / "data.txt").write_bytes(b"written on node A")
        os.sync()
        cut = await b.fence(FenceTarget(node_a, (vid,)))
        assert any(c.startswith("evict ") for c in cut) and any(c.startswith("blocklist ") for c in cut)
        with pytest.raises(OSError):
            fd = os.open(tmp_path / "a" / "late.txt", os.O_WRONLY | os.O_CREAT)
            os.write(fd, b"x" * 65536)
            os.fsync(fd)
        await b.attach(vid, node_b, {})
        key_b = await b.authorize(vid, NODE_CLIENT_PREFIX + node_b)
        mount_b = node.mount_cephfs(spec_for(node_b, key_b), ctx_a["path"], tmp_path / "b", method="fuse")
        try:
            assert (tmp_path / "b" / "data.txt").read_bytes() == b"written on node A"
        finally:
            node.unmount_cephfs(mount_b)
    finally:
        await staging.unstage(staged_a, node_id=node_a, fenced=True)
    assert await b.unfence(FenceTarget(node_a, (vid,)))
    # Quarantine denies the node rules (recorded), restore grants them again.
    await b.quarantine("volume", vid)
    assert not await b.cloud.call("rules", lambda c: list(c.shared_file_system.access_rules(b._find_share(c, vid))))
    assert ("volume", vid) in {(t.kind, t.id) for t in await b.trash()}
    assert vid not in {i.id for i in await b.inventory()}
    await b.restore("volume", vid)
    rules = await b.cloud.call("rules", lambda c: list(c.shared_file_system.access_rules(b._find_share(c, vid))))
    assert {r.access_to for r in rules} == {NODE_CLIENT_PREFIX + node_a, NODE_CLIENT_PREFIX + node_b}
    for n in (node_a, node_b):
        await b.detach(vid, n)
    assert not await b.cloud.call("rules", lambda c: list(c.shared_file_system.access_rules(b._find_share(c, vid))))
    await b.quarantine("volume", vid)
    await b.purge("volume", vid)
    assert vid not in {t.id for t in await b.trash()}

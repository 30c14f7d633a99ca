"""The services' backend cache: one backend per cluster, a new one when the cluster's kind
or config changes, and every backend it built closed at shutdown: a replaced one too, but
only then (a call in flight may still be using it)."""

from __future__ import annotations

from pathlib import Path

from berth_shared.backends import BackendCache
from berth_shared.backends.file import FileBackend
from berth_shared.backends.rbd import RbdBackend
from berth_testing.ceph import CephCluster


async def test_one_backend_per_cluster_until_its_config_changes(tmp_path: Path) -> None:
    cache = BackendCache()
    first = cache.get("cl-1", "file", {"root": str(tmp_path / "a")})
    assert cache.get("cl-1", "file", {"root": str(tmp_path / "a")}) is first
    moved = cache.get("cl-1", "file", {"root": str(tmp_path / "b")})
    assert isinstance(moved, FileBackend) and moved is not first and moved.root == tmp_path / "b"
    assert cache.cached("cl-1") is moved and cache.cached("cl-2") is None
    await cache.close()
    assert cache.cached("cl-1") is None


async def test_a_replaced_ceph_backend_is_closed_at_shutdown(ceph: CephCluster) -> None:
    cache = BackendCache()
    config = ceph.backend_config("rbd")
    first = cache.get("cl", "rbd", config)
    await first.capacity()  # connected
    second = cache.get("cl", "rbd", config | {"fence_expire_s": 7200})
    assert isinstance(first, RbdBackend) and isinstance(second, RbdBackend) and second is not first
    await second.capacity()
    assert first.conn._client is not None, "left open: a call in flight may still use it"
    await cache.close()
    assert first.conn._client is None and second.conn._client is None

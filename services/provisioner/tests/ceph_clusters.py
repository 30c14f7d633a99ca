"""Registering the session's real Ceph as Berth storage clusters, and looking at what the
provisioner made there through the bindings (used by the provisioner, crash and attacher
tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from berth_shared.backends import ceph_bindings
from berth_shared.backends.rbd import META_VOLUME, PARTIAL
from berth_testing.ceph import FS_NAME, RBD_POOL, CephCluster

# Moved to berth_testing (bench/failover.py registers a cluster too); re-exported for the tests.
from berth_testing.cephnodes import TYPES as TYPES
from berth_testing.cephnodes import register_ceph as register_ceph

GIB = 1 << 30


@contextmanager
def rbd_image(ceph: CephCluster, name: str, *, snapshot: str | None = None) -> Iterator[Any]:
    """A read-only handle (no watch) on an image of the session's pool."""
    rbd = ceph_bindings.rbd()
    with (
        ceph.client().open_ioctx(RBD_POOL) as ioctx,
        rbd.Image(ioctx, name, snapshot=snapshot, read_only=True) as img,
    ):
        yield img


def rbd_berth_images(ceph: CephCluster) -> dict[str, str]:
    """Every image in the pool that belongs to Berth: image name -> the volume id in its
    metadata (a partial one, from a create that died half-way, maps to its volume id too)."""
    rbd = ceph_bindings.rbd()
    out: dict[str, str] = {}
    with ceph.client().open_ioctx(RBD_POOL) as ioctx:
        for name in rbd.RBD().list(ioctx):
            try:
                with rbd.Image(ioctx, name, read_only=True) as img:
                    try:
                        out[name] = str(img.metadata_get(META_VOLUME))
                    except KeyError:
                        if name.endswith(PARTIAL):
                            out[name] = name[: -len(PARTIAL)]
            except rbd.ImageNotFound:
                continue
    return out


def rbd_trash(ceph: CephCluster) -> list[str]:
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(RBD_POOL) as ioctx:
        return [str(e["name"]) for e in rbd.RBD().trash_list(ioctx)]


def fs_mgr(ceph: CephCluster, prefix: str, **args: Any) -> Any:
    """A `fs subvolume ...` command of the mgr volumes module (None when it answers nothing)."""
    import json

    cmd = {"prefix": prefix, "vol_name": FS_NAME, "format": "json", **args}
    ret, out, err = ceph.client().mgr_command(json.dumps(cmd), b"", timeout=30)
    if ret != 0:
        raise OSError(-ret, f"{prefix}: {err}")
    return json.loads(out) if out.strip() else None


def fs_subvolumes(ceph: CephCluster, group: str) -> dict[str, dict[str, Any]]:
    """Subvolume name -> `fs subvolume info` for one group (empty if the group is absent)."""
    try:
        names = [str(s["name"]) for s in fs_mgr(ceph, "fs subvolume ls", group_name=group) or []]
    except OSError:
        return {}
    return {n: dict(fs_mgr(ceph, "fs subvolume info", sub_name=n, group_name=group)) for n in names}

"""Registering the session's real Ceph as Berth storage clusters, and looking at what the
provisioner made there through the bindings (used by the provisioner, crash and attacher
tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx

from berth_shared.backends import ceph_bindings
from berth_shared.backends.rbd import META_VOLUME, PARTIAL
from berth_testing.ceph import FS_NAME, RBD_POOL, CephCluster

GIB = 1 << 30
TYPES = {"rbd": "ceph-rbd", "cephfs": "ceph-fs"}


async def register_ceph(
    http: httpx.AsyncClient,
    admin_token: str,
    ceph: CephCluster,
    kind: Literal["rbd", "cephfs"],
    *,
    name: str | None = None,
    **config: Any,
) -> dict[str, Any]:
    """A volume type served only by this cluster (`ceph-rbd` / `ceph-fs`) and the cluster
    itself, registered over the admin HTTP API with the exact JSON docs/ceph.md shows."""
    h = {"Authorization": f"Bearer {admin_token}"}
    vtype = TYPES[kind]
    r = await http.post("/v1/volume-types", json={"name": vtype, "description": f"Ceph {kind}"}, headers=h)
    assert r.status_code == 201, r.text
    body = {
        "name": name or f"ceph-{kind}",
        "backend": kind,
        "config": ceph.backend_config(kind, **config),
        "volume_types": [vtype],
        "zone": "default",
        "capacity_gib": 64,
        "overcommit_ratio": 4.0,
    }
    r = await http.post("/v1/clusters", json=body, headers=h)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


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

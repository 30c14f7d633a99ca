"""A real Ceph as the storage of Berth's own services and of CSI node services: the volume
type and cluster registered with the provisioner, each node's cephx identity, and the
operator's CephFS authorisation step. Shared by the Ceph tests and `bench/failover.py`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import httpx

from berth_shared.backends import build_backend
from berth_shared.backends.cephfs import CephFsBackend
from berth_shared.backends.rbd import RbdBackend
from berth_testing.ceph import CephCluster
from berth_testing.csinode import CsiNode

Kind = Literal["rbd", "cephfs"]
TYPES = {"rbd": "ceph-rbd", "cephfs": "ceph-fs"}


async def register_ceph(
    http: httpx.AsyncClient,
    admin_token: str,
    ceph: CephCluster,
    kind: Kind,
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


def node_env(cluster: CephCluster, kind: Kind) -> Callable[[str, Path], dict[str, str]]:
    """Each node's cephx identity, as extra environment of its node service. RBD: the
    cluster's user (a fence goes by client address). CephFS: the node's own
    `client.berth-node-<node>` (a fence evicts its sessions by that id too), its keyring
    written once the subvolume is authorised for it (`authorize_nodes`)."""

    def env(node_id: str, workdir: Path) -> dict[str, str]:
        out = {"BERTH_CEPH_CONF": str(cluster.conf)}
        if kind == "rbd":
            out |= {"BERTH_RBD_USER": cluster.user, "BERTH_RBD_KEYRING": str(cluster.keyring)}
        else:
            out["BERTH_CEPHFS_KEYRING"] = str(workdir / "cephfs.keyring")
        return out

    return env


def ceph_backend(cluster: CephCluster, kind: Kind) -> RbdBackend | CephFsBackend:
    """The caller's own view of the cluster (the blocklist; CephFS authorisations)."""
    backend = build_backend(kind, cluster.backend_config(kind))
    assert isinstance(backend, RbdBackend | CephFsBackend)
    return backend


async def authorize_nodes(backend: RbdBackend | CephFsBackend, volume_id: str, nodes: Iterable[CsiNode]) -> None:
    """The operator's step for CephFS: each node's cephx id authorised on the subvolume, its
    key in the keyring `node_env` points the node service at."""
    assert isinstance(backend, CephFsBackend)
    for node in nodes:
        client_id = backend.node_client_id(node.node_id)
        key = await backend.authorize(volume_id, client_id)
        assert key
        node.workdir.mkdir(parents=True, exist_ok=True)
        (node.workdir / "cephfs.keyring").write_text(f"[client.{client_id}]\n\tkey = {key}\n")

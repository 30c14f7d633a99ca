"""Build a backend from a storage cluster's kind and config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from berth_shared.backends.base import Backend
from berth_shared.backends.file import FileBackend
from berth_shared.errors import InvalidArgument

KINDS = ("file", "rbd", "cephfs", "cinder", "manila")


def validate_backend_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """Check a cluster's backend config before it is stored; return the normalised form."""
    if kind == "file":
        root = config.get("root")
        if not isinstance(root, str) or not root.startswith("/"):
            raise InvalidArgument("file backend config needs 'root', an absolute path", reason="invalid_backend_config")
        cgroup = config.get("qos_cgroup")
        if cgroup is not None and (not isinstance(cgroup, str) or not cgroup.startswith("/")):
            raise InvalidArgument(
                "file backend config: 'qos_cgroup' must be the absolute path of a cgroup directory",
                reason="invalid_backend_config",
            )
        return {"root": root} | ({"qos_cgroup": cgroup} if cgroup else {})
    if kind == "rbd":
        # Imported here: the Ceph backends load their bindings lazily, so validating (and
        # running the file backend) never needs Ceph's Python packages.
        from berth_shared.backends.rbd import validate_rbd_config

        return validate_rbd_config(config)[1]
    if kind == "cephfs":
        from berth_shared.backends.cephfs import validate_cephfs_config

        return validate_cephfs_config(config)[1]
    if kind == "cinder":
        # openstacksdk is imported only when a connection is first made.
        from berth_shared.backends.cinder import validate_cinder_config

        return validate_cinder_config(config)[1]
    if kind == "manila":
        from berth_shared.backends.manila import validate_manila_config

        return validate_manila_config(config)[1]
    raise InvalidArgument(f"unknown backend kind {kind!r}; known: {', '.join(KINDS)}", reason="unknown_backend_kind")


def build_backend(kind: str, config: dict[str, Any]) -> Backend:
    cfg = validate_backend_config(kind, config)
    if kind == "rbd":
        from berth_shared.backends.rbd import RbdBackend

        return RbdBackend(cfg)
    if kind == "cephfs":
        from berth_shared.backends.cephfs import CephFsBackend

        return CephFsBackend(cfg)
    if kind == "cinder":
        from berth_shared.backends.cinder import CinderBackend

        return CinderBackend(cfg)
    if kind == "manila":
        from berth_shared.backends.manila import ManilaBackend

        return ManilaBackend(cfg)
    return FileBackend(Path(cfg["root"]), qos_cgroup=cfg.get("qos_cgroup"))

"""Node-side storage operations (attach, mount, detach) used by the CSI adapter and the node agent.

The public surface: the names below, and the modules that are namespaces of host operations
(`host`, `mounts`, `staging`, `ceph`, `ceph_stage`, `file`), used as `mounts.mount(...)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth_shared.node import ceph, ceph_stage, file, host, mounts, staging
from berth_shared.node.ceph import CephClientSpec
from berth_shared.node.cutoff import cut_off_file
from berth_shared.node.settings import NodeSettings
from berth_shared.node.staging import Staged, StageRequest

if TYPE_CHECKING:
    from berth_shared.node.heartbeat import BOOT_ID_FILE, NodeHeartbeat, read_boot_id

# The heartbeat names are loaded on first use: they pull in the bus (nats), about 1 s of
# imports (several under load), for every process that only needs the host tools.
_LAZY = frozenset({"BOOT_ID_FILE", "NodeHeartbeat", "read_boot_id"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from berth_shared.node import heartbeat

        return getattr(heartbeat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BOOT_ID_FILE",
    "CephClientSpec",
    "NodeHeartbeat",
    "NodeSettings",
    "StageRequest",
    "Staged",
    "ceph",
    "ceph_stage",
    "cut_off_file",
    "file",
    "host",
    "mounts",
    "read_boot_id",
    "staging",
]

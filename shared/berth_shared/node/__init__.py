"""Node-side storage operations (attach, mount, detach) used by the CSI adapter and the node agent.

The public surface: the names below, and the modules that are namespaces of host operations
(`host`, `mounts`, `staging`, `ceph`, `ceph_stage`, `file`), used as `mounts.mount(...)`.
"""

from berth_shared.node import ceph, ceph_stage, file, host, mounts, staging
from berth_shared.node.ceph import CephClientSpec
from berth_shared.node.cutoff import cut_off_file
from berth_shared.node.heartbeat import BOOT_ID_FILE, NodeHeartbeat, read_boot_id
from berth_shared.node.settings import NodeSettings
from berth_shared.node.staging import Staged, StageRequest

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

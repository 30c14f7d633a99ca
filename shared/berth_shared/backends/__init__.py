"""Storage backends behind one interface; `build_backend` picks the implementation per cluster.

The public surface: services import from `berth_shared.backends`. The implementations
(`backends.rbd`, `backends.cephfs`, `backends.cinder`, `backends.manila`, `backends.file`) are
imported only by whoever needs one of them by name (tests, fixtures): they load their client
libraries (Ceph bindings, openstacksdk) lazily, and `build_backend` imports them on first use."""

from berth_shared.backends.base import (
    Backend,
    BackendError,
    Capacity,
    FenceTarget,
    GroupSnapshots,
    InventoryItem,
    IoCounters,
    ObjectKind,
    QosLimits,
    QosState,
    TrashItem,
    Unsupported,
    group_snapshots,
)
from berth_shared.backends.cache import BackendCache
from berth_shared.backends.openstack_discovery import OfferedType, offered_types
from berth_shared.backends.publish import Attaches, publish_context, withdraw
from berth_shared.backends.registry import build_backend, validate_backend_config

__all__ = [
    "Attaches",
    "Backend",
    "BackendCache",
    "BackendError",
    "Capacity",
    "FenceTarget",
    "GroupSnapshots",
    "InventoryItem",
    "IoCounters",
    "ObjectKind",
    "OfferedType",
    "QosLimits",
    "QosState",
    "TrashItem",
    "Unsupported",
    "build_backend",
    "group_snapshots",
    "offered_types",
    "publish_context",
    "validate_backend_config",
    "withdraw",
]

"""Storage backends behind one interface; `build_backend` picks the implementation per cluster."""

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
from berth_shared.backends.registry import build_backend, validate_backend_config

__all__ = [
    "Backend",
    "BackendCache",
    "BackendError",
    "Capacity",
    "FenceTarget",
    "GroupSnapshots",
    "InventoryItem",
    "IoCounters",
    "ObjectKind",
    "QosLimits",
    "QosState",
    "TrashItem",
    "Unsupported",
    "build_backend",
    "group_snapshots",
    "validate_backend_config",
]

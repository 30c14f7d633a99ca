"""The provisioner's repository layer: every SQL statement on its tables, by resource,
including the quota and cluster-capacity accounting. The use cases (volumes.py,
snapshots.py, group_snapshots.py, clusters.py, quotas.py) open the transactions and call
these inside them."""

from berth_provisioner.repo import (
    accounting,
    clusters,
    group_snapshots,
    operations,
    quotas,
    snapshots,
    volume_types,
    volumes,
)

__all__ = ["accounting", "clusters", "group_snapshots", "operations", "quotas", "snapshots", "volume_types", "volumes"]

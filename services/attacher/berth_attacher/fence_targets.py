"""What a fence cuts off, per storage cluster (pure): recorded with the fence when it
starts, so that it can be redone after a crash, or undone by the unfence, from the row
alone (even while the provisioner is down)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row

from berth_shared.backends import FenceTarget


def fence_targets(atts: Sequence[Row[Any]], staged: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cluster: backend kind, config, the node's volumes there and its client addresses."""
    addresses: dict[str, str] = {v["volume_id"]: v["client_address"] for v in staged if v.get("client_address")}
    targets: dict[str, Any] = {}
    for att in atts:
        entry = targets.setdefault(
            att.cluster_id, {"backend": att.backend, "config": att.backend_config, "volumes": [], "addresses": []}
        )
        entry["volumes"].append(att.volume_id)
        addr = addresses.get(att.volume_id)
        if addr and addr not in entry["addresses"]:
            entry["addresses"].append(addr)
    return targets


def per_cluster(raw: dict[str, Any], node_id: str) -> list[tuple[str, str, dict[str, Any], FenceTarget]]:
    """A recorded fence's targets: (cluster id, backend kind, config, target) by cluster id."""
    out = []
    for cluster_id, entry in sorted(raw.items()):
        target = FenceTarget(
            node_id=node_id, volume_ids=tuple(entry["volumes"]), client_addresses=tuple(entry["addresses"])
        )
        out.append((cluster_id, entry["backend"], entry["config"], target))
    return out

"""Size-scaled QoS (pure code): the limits a volume should have, its measured load, and
whether it runs at its limit.

A policy per volume type gives each limit as `clamp(base + per_gib x size_gib, floor,
ceiling)`, for totals (`iops`, `bps`) and per direction (`read_iops`, ...). The load is the
rate between two IO samples of the same device; a volume is saturated when one measured
rate reaches `saturation_pct` of the matching limit the storage holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from berth_shared.backends import IoCounters, QosLimits
from berth_shared.messages.watcher import QosPolicySet

LIMIT_FIELDS = ("iops", "bps", "read_iops", "write_iops", "read_bps", "write_bps")


def limits_for(policy: QosPolicySet | None, size_gib: int) -> QosLimits:
    """The limits a volume of this size gets under this policy (none: unlimited)."""
    if policy is None:
        return QosLimits()
    values: dict[str, int] = {}
    for name in LIMIT_FIELDS:
        rule = getattr(policy, name)
        if rule is None:
            continue
        value = rule.base + rule.per_gib * size_gib
        if rule.floor is not None:
            value = max(value, rule.floor)
        if rule.ceiling is not None:
            value = min(value, rule.ceiling)
        values[name] = max(1, math.ceil(value))
    return QosLimits(**values)


@dataclass(frozen=True)
class Sample:
    at: datetime
    counters: IoCounters

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        return {
            "at": self.at.isoformat(),
            "read_ops": c.read_ops,
            "write_ops": c.write_ops,
            "read_bytes": c.read_bytes,
            "write_bytes": c.write_bytes,
            "source": c.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sample:
        counters = IoCounters(
            read_ops=int(data["read_ops"]),
            write_ops=int(data["write_ops"]),
            read_bytes=int(data["read_bytes"]),
            write_bytes=int(data["write_bytes"]),
            source=str(data.get("source", "")),
        )
        return cls(datetime.fromisoformat(data["at"]), counters)


def load(previous: Sample | None, current: Sample) -> dict[str, float] | None:
    """Rates per second between two samples; None when they are not comparable (first
    sample, another device, counters that went back: a reset)."""
    if previous is None or previous.counters.source != current.counters.source:
        return None
    seconds = (current.at - previous.at).total_seconds()
    a, b = previous.counters, current.counters
    deltas = {
        "read_iops": b.read_ops - a.read_ops,
        "write_iops": b.write_ops - a.write_ops,
        "read_bps": b.read_bytes - a.read_bytes,
        "write_bps": b.write_bytes - a.write_bytes,
    }
    if seconds <= 0 or any(v < 0 for v in deltas.values()):
        return None
    rates = {k: v / seconds for k, v in deltas.items()}
    rates["iops"] = rates["read_iops"] + rates["write_iops"]
    rates["bps"] = rates["read_bps"] + rates["write_bps"]
    return {k: round(v, 3) for k, v in rates.items()}


def at_limit(rates: dict[str, float] | None, held: QosLimits, saturation_pct: float) -> dict[str, str]:
    """{limit: "rate / limit"} for every limit the load reaches (empty: not saturated)."""
    if not rates:
        return {}
    found: dict[str, str] = {}
    for name, limit in held.as_dict().items():
        rate = rates.get(name, 0.0)
        if rate >= limit * saturation_pct / 100.0:
            found[name] = f"{rate:.0f} / {limit}"
    return found

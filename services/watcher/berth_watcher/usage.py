"""Usage and capacity forecast (pure code).

Usage per tenant, cluster and volume type: volumes, provisioned bytes, used bytes (what
the thin backends really hold). The forecast fits a least-squares line on a cluster's
recorded used bytes over the window and says in how many days it reaches its fill
threshold; with too little history it says nothing rather than guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from berth_shared.messages.watcher import Severity
from berth_watcher.model import BackendObject, Volume

GIB = 1 << 30
DAY = 86400.0
MIN_SAMPLES = 3


@dataclass
class Usage:
    scope: str  # tenant | cluster | volume_type
    key: str
    volumes: int = 0
    provisioned_bytes: int = 0
    used_bytes: int = 0


def aggregate(volumes: Iterable[Volume], objects: Iterable[BackendObject]) -> list[Usage]:
    """Rows per tenant, cluster and volume type; a volume's used bytes come from its object."""
    used = {(o.cluster_id, o.id): o.used_bytes for o in objects if o.kind == "volume"}
    rows: dict[tuple[str, str], Usage] = {}

    def add(scope: str, key: str, size: int, held: int) -> None:
        row = rows.get((scope, key))
        if row is None:
            row = rows[scope, key] = Usage(scope, key)
        row.volumes += 1
        row.provisioned_bytes += size
        row.used_bytes += held

    for v in volumes:
        size, held = v.size_gib * GIB, used.get((v.cluster_id, v.id), 0)
        add("tenant", v.tenant, size, held)
        add("cluster", v.cluster_id, size, held)
        add("volume_type", v.volume_type, size, held)
    return sorted(rows.values(), key=lambda r: (r.scope, r.key))


def growth_per_day(points: Iterable[tuple[datetime, int]]) -> float | None:
    """Least-squares slope of used bytes over time, in bytes per day (None: too few points)."""
    pts = sorted(points)
    if len(pts) < MIN_SAMPLES:
        return None
    t0 = pts[0][0]
    xs = [(t - t0).total_seconds() / DAY for t, _ in pts]
    ys = [float(y) for _, y in pts]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def days_until(capacity: int, used: int, threshold: float, growth: float | None) -> float | None:
    """Days until `used` reaches `threshold` x `capacity` (0: already there; None: never, at
    this rate, or unknown)."""
    target = threshold * capacity
    if used >= target:
        return 0.0
    if growth is None or growth <= 0:
        return None
    return round((target - used) / growth, 2)


def severity(fill: float, threshold: float, days: float | None, warning_days: float) -> Severity:
    if fill >= threshold:
        return "critical"
    if days is not None and days <= warning_days:
        return "warning"
    return "info"


def thin_ratio(row: Usage, capacity: int | None) -> float | None:
    """A cluster's overcommit (provisioned / capacity); elsewhere provisioned / used."""
    base = capacity if row.scope == "cluster" else row.used_bytes
    return round(row.provisioned_bytes / base, 3) if base else None


def by_key(rows: Iterable[Usage], scope: str) -> dict[str, Usage]:
    return {r.key: r for r in rows if r.scope == scope}

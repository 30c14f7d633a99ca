"""Size-scaled QoS as a table: each limit is clamp(base + per_gib x size, floor, ceiling),
rounded up; totals and per-direction limits side by side; what a cgroup can hold of them;
when a measured load counts as running at the limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from berth_shared.backends import IoCounters, QosLimits
from berth_shared.backends.blkio import per_direction
from berth_shared.messages.watcher import QosPolicySet
from berth_watcher import qos

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rules", "size_gib", "expected"),
    [
        # base + per GiB
        ({"iops": {"base": 100, "per_gib": 10}}, 1, {"iops": 110}),
        ({"iops": {"base": 100, "per_gib": 10}}, 50, {"iops": 600}),
        # the floor lifts a small volume, the ceiling stops a large one
        ({"iops": {"per_gib": 3, "floor": 100, "ceiling": 3000}}, 1, {"iops": 100}),
        ({"iops": {"per_gib": 3, "floor": 100, "ceiling": 3000}}, 500, {"iops": 1500}),
        ({"iops": {"per_gib": 3, "floor": 100, "ceiling": 3000}}, 2000, {"iops": 3000}),
        # a floor alone is a fixed limit; floor == ceiling too
        ({"write_bps": {"floor": 50_000_000}}, 1000, {"write_bps": 50_000_000}),
        ({"read_iops": {"per_gib": 100, "floor": 500, "ceiling": 500}}, 1, {"read_iops": 500}),
        # a fraction per GiB rounds up: never a limit below what the rule gives
        ({"iops": {"per_gib": 0.5}}, 3, {"iops": 2}),
        ({"bps": {"per_gib": 1_500_000.5}}, 2, {"bps": 3_000_001}),
        # totals and per direction together, each scaled on its own
        (
            {
                "iops": {"base": 200, "per_gib": 5},
                "write_iops": {"per_gib": 2, "floor": 50},
                "read_bps": {"per_gib": 1e6},
            },
            10,
            {"iops": 250, "write_iops": 50, "read_bps": 10_000_000},
        ),
        (
            {k: {"base": 1, "per_gib": 1} for k in ("iops", "bps", "read_iops", "write_iops", "read_bps", "write_bps")},
            9,
            {k: 10 for k in ("iops", "bps", "read_iops", "write_iops", "read_bps", "write_bps")},
        ),
    ],
)
def test_limits_scale_with_size(rules: dict[str, Any], size_gib: int, expected: dict[str, int]) -> None:
    policy = QosPolicySet.model_validate({"volume_type": "t"} | rules)
    assert qos.limits_for(policy, size_gib).as_dict() == expected


def test_no_policy_is_unlimited() -> None:
    assert qos.limits_for(None, 100).unlimited


@pytest.mark.parametrize(
    "bad",
    [
        {},  # no limit at all
        {"iops": {}},  # a rule that gives nothing
        {"iops": {"floor": 10, "ceiling": 5}},
        {"iops": {"base": -1}},
        {"iops": {"per_gib": -0.5}},
        {"iops": {"floor": 0}},
        {"iops": {"base": "100"}},  # strict: a number, not a string
        {"iops": {"base": 100}, "saturation_pct": 0},
        {"latency": {"base": 1}},  # no such limit
    ],
)
def test_bad_policies_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        QosPolicySet.model_validate({"volume_type": "t"} | bad)


@pytest.mark.parametrize(
    ("limits", "held"),
    [
        # a cgroup has no total: a total caps each direction, the lower of the two wins
        (QosLimits(iops=300), {"read_iops": 300, "write_iops": 300}),
        (QosLimits(iops=300, write_iops=100), {"read_iops": 300, "write_iops": 100}),
        (QosLimits(iops=300, write_iops=900), {"read_iops": 300, "write_iops": 300}),
        (QosLimits(bps=10, read_bps=5), {"read_bps": 5, "write_bps": 10}),
        (QosLimits(read_iops=7), {"read_iops": 7}),
        (QosLimits(), {}),
    ],
)
def test_what_a_cgroup_holds(limits: QosLimits, held: dict[str, int]) -> None:
    assert per_direction(limits) == held


def sample(seconds: float, r_ops: int, w_ops: int, r_bytes: int = 0, w_bytes: int = 0) -> qos.Sample:
    return qos.Sample(T0 + timedelta(seconds=seconds), IoCounters(r_ops, w_ops, r_bytes, w_bytes, "loop1"))


@pytest.mark.parametrize(
    ("held", "rates_at", "hot"),
    [
        # 100 writes/s against a write limit of 100: at it
        (QosLimits(write_iops=100), (0, 1000), {"write_iops"}),
        # 89 % of it: not yet (the policy's saturation_pct, 90)
        (QosLimits(write_iops=100), (0, 890), set()),
        # a total is reached by reads and writes together
        (QosLimits(iops=150), (600, 900), {"iops"}),
        # per direction: the busy direction only
        (QosLimits(read_iops=1000, write_iops=100), (600, 950), {"write_iops"}),
        (QosLimits(), (10**6, 10**6), set()),  # unlimited is never at a limit
    ],
)
def test_at_limit(held: QosLimits, rates_at: tuple[int, int], hot: set[str]) -> None:
    rates = qos.load(sample(0, 0, 0), sample(10, *rates_at))
    assert set(qos.at_limit(rates, held, 90.0)) == hot

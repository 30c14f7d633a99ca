"""The liveness policy (pure): when a node is dead, and whether a fence may start now."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from berth_attacher.config import AttacherSettings
from berth_attacher.liveness import NodeView, Policy, assess, may_fence

T0 = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = Policy(heartbeat_interval_s=2.0, dead_after_s=10.0)


def node(
    silent_s: float | None,
    *,
    ready: bool | None = None,
    out_of_service: bool | None = None,
    created_ago_s: float = 3600.0,
    state: str = "alive",
) -> NodeView:
    last = None if silent_s is None else T0 - timedelta(seconds=silent_s)
    return NodeView("n1", state, last, T0 - timedelta(seconds=created_ago_s), ready, out_of_service)


# -- assess -----------------------------------------------------------------------------


@pytest.mark.parametrize("silent_s", [0.0, 1.0, 3.9, 4.99])
def test_recent_heartbeat_is_alive(silent_s: float) -> None:
    assert assess(node(silent_s), T0, POLICY) == ("alive", "heartbeating")


@pytest.mark.parametrize("silent_s", [5.0, 7.5, 9.99])
def test_silence_past_half_the_grace_is_suspect(silent_s: float) -> None:
    verdict, why = assess(node(silent_s), T0, POLICY)
    assert verdict == "suspect"
    assert "no heartbeat" in why


@pytest.mark.parametrize("silent_s", [10.0, 11.0, 3600.0])
def test_silence_for_the_grace_period_is_dead(silent_s: float) -> None:
    verdict, why = assess(node(silent_s), T0, POLICY)
    assert verdict == "dead"
    assert f"{silent_s:.0f}s" in why


def test_suspect_threshold_is_at_least_two_heartbeat_intervals() -> None:
    # With a short grace and slow heartbeats, one missed beat is not suspicious yet.
    policy = Policy(heartbeat_interval_s=3.0, dead_after_s=8.0)
    assert assess(node(5.9), T0, policy)[0] == "alive"
    assert assess(node(6.0), T0, policy)[0] == "suspect"
    assert assess(node(8.0), T0, policy)[0] == "dead"


def test_a_node_that_never_beat_is_timed_from_its_registration() -> None:
    assert assess(node(None, created_ago_s=1.0), T0, POLICY)[0] == "alive"
    assert assess(node(None, created_ago_s=6.0), T0, POLICY)[0] == "suspect"
    assert assess(node(None, created_ago_s=10.0), T0, POLICY)[0] == "dead"


def test_require_not_ready_keeps_a_silent_but_ready_node_suspect() -> None:
    policy = replace(POLICY, require_not_ready=True)
    for ready in (None, True):
        verdict, why = assess(node(60.0, ready=ready), T0, policy)
        assert verdict == "suspect"
        assert "Ready" in why
    assert assess(node(60.0, ready=False), T0, policy)[0] == "dead"
    # NotReady alone is no death: the node is still heartbeating.
    assert assess(node(1.0, ready=False), T0, policy)[0] == "alive"


def test_without_require_not_ready_silence_alone_is_enough() -> None:
    assert assess(node(60.0, ready=True), T0, POLICY)[0] == "dead"


def test_out_of_service_taint_is_death_at_once() -> None:
    verdict, why = assess(node(0.0, out_of_service=True), T0, POLICY)
    assert verdict == "dead"
    assert "out-of-service" in why
    # ...even when Kubernetes still calls it Ready and NotReady is required.
    policy = replace(POLICY, require_not_ready=True)
    assert assess(node(0.0, ready=True, out_of_service=True), T0, policy)[0] == "dead"


def test_out_of_service_can_be_ignored_by_policy() -> None:
    policy = replace(POLICY, honour_out_of_service=False)
    assert assess(node(0.0, out_of_service=True), T0, policy)[0] == "alive"
    assert assess(node(None, out_of_service=False), T0, POLICY)[0] == "dead"  # registered an hour ago


# -- may_fence ------------------------------------------------------------------------


def test_fence_allowed_under_the_cap_and_the_rate() -> None:
    assert may_fence(T0, 0, [], POLICY) is None
    assert may_fence(T0, POLICY.max_fenced_nodes - 1, [], POLICY) is None


@pytest.mark.parametrize("cap", [1, 3])
def test_cap_on_nodes_fenced_at_once(cap: int) -> None:
    policy = replace(POLICY, max_fenced_nodes=cap)
    assert may_fence(T0, cap - 1, [], policy) is None
    for fenced_now in (cap, cap + 1):
        why = may_fence(T0, fenced_now, [], policy)
        assert why is not None
        assert f"cap {cap}" in why


def test_rate_window_counts_only_recent_fences() -> None:
    policy = replace(POLICY, max_fences_per_window=2, fence_window_s=60.0)
    recent = [T0 - timedelta(seconds=5), T0 - timedelta(seconds=59)]
    why = may_fence(T0, 0, recent, policy)
    assert why is not None
    assert "limit 2" in why
    # One of them slides out of the window: a fence may start again.
    old = [T0 - timedelta(seconds=5), T0 - timedelta(seconds=61)]
    assert may_fence(T0, 0, old, policy) is None
    assert may_fence(T0, 0, [T0 - timedelta(hours=1)] * 10, policy) is None


def test_cap_is_checked_before_the_rate() -> None:
    policy = replace(POLICY, max_fenced_nodes=1, max_fences_per_window=1)
    why = may_fence(T0, 1, [T0], policy)
    assert why is not None
    assert "cap" in why


def test_settings_build_the_policy() -> None:
    s = AttacherSettings(
        dead_after_s=1.5,
        heartbeat_interval_s=0.2,
        require_not_ready=True,
        honour_out_of_service=False,
        fence_mode="manual",
        max_fenced_nodes=2,
        max_fences_per_window=7,
        fence_window_s=30.0,
        unfence_mode="manual",
    )
    assert s.policy() == Policy(
        heartbeat_interval_s=0.2,
        dead_after_s=1.5,
        require_not_ready=True,
        honour_out_of_service=False,
        fence_mode="manual",
        max_fenced_nodes=2,
        max_fences_per_window=7,
        fence_window_s=30.0,
        unfence_mode="manual",
    )
    assert AttacherSettings().policy() == Policy()

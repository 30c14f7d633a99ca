"""The node, attachment and fence lifecycles (pure), as a table: every (state, event) pair
either moves to the listed state or is refused."""

from __future__ import annotations

from enum import Enum
from typing import get_args

import pytest

from berth_attacher.lifecycle import (
    ATTACHMENT,
    FENCE,
    GRANTABLE_NODE_STATES,
    NODE,
    AttachmentState,
    FenceState,
    NodeState,
)
from berth_shared.lifecycle import GONE, Lifecycle, TransitionNotAllowed
from berth_shared.messages import attacher as contract

REFUSED = "refused"
BEFORE_FENCE = ("alive", "suspect", "dead", "awaiting_approval")

NODE_TABLE: dict[tuple[str, str], str | None] = {
    ("alive", "silent"): "suspect",
    ("suspect", "heard"): "alive",
    ("dead", "heard"): "alive",
    ("awaiting_approval", "heard"): "alive",
    ("alive", "fence_deferred"): "dead",
    ("suspect", "fence_deferred"): "dead",
    ("dead", "fence_deferred"): "dead",
    ("alive", "await_approval"): "awaiting_approval",
    ("suspect", "await_approval"): "awaiting_approval",
    ("dead", "await_approval"): "awaiting_approval",
    **{(s, "fence"): "fencing" for s in BEFORE_FENCE},
    ("fencing", "fenced"): "fenced",
    ("fenced", "unfenced"): "alive",
}

ATTACHMENT_TABLE: dict[tuple[str, str], str | None] = {
    ("attached", "released"): "released",
    ("released", "republished"): "attached",
    ("attached", "unpublished"): GONE,
    ("released", "unpublished"): GONE,
}

FENCE_TABLE: dict[tuple[str, str], str | None] = {("pending", "completed"): "done"}


def every_pair(table: dict[tuple[str, str], str | None], states: type[Enum]) -> list[tuple[str, str, str | None]]:
    events = sorted({e for _, e in table})
    return [(s.value, e, table.get((s.value, e), REFUSED)) for s in states for e in events]


def check(machine: Lifecycle, state: str, event: str, expected: str | None) -> None:
    if expected == REFUSED:
        assert not machine.allows(state, event)
        with pytest.raises(TransitionNotAllowed):
            machine.target(state, event)
    else:
        assert machine.target(state, event) == expected


@pytest.mark.parametrize(("state", "event", "expected"), every_pair(NODE_TABLE, NodeState))
def test_node_transitions(state: str, event: str, expected: str | None) -> None:
    check(NODE, state, event, expected)


@pytest.mark.parametrize(("state", "event", "expected"), every_pair(ATTACHMENT_TABLE, AttachmentState))
def test_attachment_transitions(state: str, event: str, expected: str | None) -> None:
    check(ATTACHMENT, state, event, expected)


@pytest.mark.parametrize(("state", "event", "expected"), every_pair(FENCE_TABLE, FenceState))
def test_fence_transitions(state: str, event: str, expected: str | None) -> None:
    check(FENCE, state, event, expected)


def test_the_tables_are_the_whole_lifecycles() -> None:
    for machine, table in ((NODE, NODE_TABLE), (ATTACHMENT, ATTACHMENT_TABLE), (FENCE, FENCE_TABLE)):
        assert {(t.source, t.event): t.target for t in machine.transitions} == table


def test_states_are_the_bus_contracts() -> None:
    assert set(NodeState) == set(get_args(contract.NodeState))
    assert set(AttachmentState) == set(get_args(contract.AttachmentState))


def test_the_single_writer_order() -> None:
    """A fenced node gets back only through an unfence; heartbeats cannot revive a node
    whose fence has started; grants go only to nodes not declared dead."""
    assert NODE.sources("unfenced") == {"fenced"}
    assert not NODE.allows("fencing", "heard") and not NODE.allows("fenced", "heard")
    assert NODE.sources("fenced") == {"fencing"}
    assert {"alive", "suspect"} == GRANTABLE_NODE_STATES
    # Grants are released by the fence only: nothing else moves attached to released.
    assert ATTACHMENT.sources("released") == {"attached"}

"""The node, attachment and fence lifecycles (pure), as a table: every (state, event) pair
either moves to the listed state or is refused."""

from __future__ import annotations

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
from berth_shared.lifecycle import GONE
from berth_shared.messages import attacher as contract
from berth_testing.lifecycle import Table, check, every_pair, table_of

BEFORE_FENCE = ("alive", "suspect", "dead", "awaiting_approval")

NODE_TABLE: Table = {
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

ATTACHMENT_TABLE: Table = {
    ("attached", "released"): "released",
    ("released", "republished"): "attached",
    ("attached", "unpublished"): GONE,
    ("released", "unpublished"): GONE,
}

FENCE_TABLE: Table = {("pending", "completed"): "done"}


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
        assert table_of(machine) == table


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

"""The lifecycles of nodes, attachments and fences: which state each event moves them to
(pure). The order that keeps one writer per volume is visible here: a node's attachments
are released only by the event that completes its fence ("fenced"), and a fenced node
comes back only by an explicit unfence.
"""

from __future__ import annotations

from enum import StrEnum

from berth_shared.lifecycle import GONE, Lifecycle


class NodeState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"  # dead, but its fence is deferred (the fencing-storm guard)
    AWAITING_APPROVAL = "awaiting_approval"  # dead, and the manual policy waits for an admin
    FENCING = "fencing"
    FENCED = "fenced"


class AttachmentState(StrEnum):
    ATTACHED = "attached"
    RELEASED = "released"  # fenced away; waiting for the CO to unpublish


class FenceState(StrEnum):
    PENDING = "pending"
    DONE = "done"


N = NodeState
A = AttachmentState
F = FenceState

# Before a fence starts, a node can still come back: silence was a blip.
NOT_YET_FENCED = (N.ALIVE, N.SUSPECT, N.DEAD, N.AWAITING_APPROVAL)

NODE = Lifecycle(
    "node",
    NodeState,
    [
        ("silent", N.ALIVE, N.SUSPECT),
        ("heard", N.SUSPECT, N.ALIVE),
        ("heard", N.DEAD, N.ALIVE),
        ("heard", N.AWAITING_APPROVAL, N.ALIVE),
        ("fence_deferred", N.ALIVE, N.DEAD),
        ("fence_deferred", N.SUSPECT, N.DEAD),
        ("fence_deferred", N.DEAD, N.DEAD),  # deferred again on a later pass
        ("await_approval", N.ALIVE, N.AWAITING_APPROVAL),
        ("await_approval", N.SUSPECT, N.AWAITING_APPROVAL),
        ("await_approval", N.DEAD, N.AWAITING_APPROVAL),
        *(("fence", state, N.FENCING) for state in NOT_YET_FENCED),
        ("fenced", N.FENCING, N.FENCED),
        ("unfenced", N.FENCED, N.ALIVE),
    ],
)

ATTACHMENT = Lifecycle(
    "attachment",
    AttachmentState,
    [
        ("released", A.ATTACHED, A.RELEASED),
        # The CO attaches the volume to the node again after its unfence: same row, new generation.
        ("republished", A.RELEASED, A.ATTACHED),
        ("unpublished", A.ATTACHED, GONE),
        ("unpublished", A.RELEASED, GONE),
    ],
)

FENCE = Lifecycle("fence", FenceState, [("completed", F.PENDING, F.DONE)])

# A volume may be granted while the provisioner has it in one of these statuses.
PUBLISHABLE_VOLUME_STATUSES = frozenset({"available", "expanding"})
# Nodes that may be granted volumes: not yet declared dead.
GRANTABLE_NODE_STATES = frozenset({N.ALIVE, N.SUSPECT})
# What the liveness loop looks at each pass (fencing and fenced nodes are past it).
MONITORED_NODE_STATES = frozenset({N.ALIVE, N.SUSPECT, N.DEAD})
# Nodes counted against the fencing-storm cap.
FENCED_OR_FENCING = frozenset({N.FENCING, N.FENCED})

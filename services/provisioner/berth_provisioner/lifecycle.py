"""The lifecycles of volumes, snapshots and group snapshots: which status change each
event makes (pure).

A status moves only along these transitions, each a conditional UPDATE on the status read
(see repo/volumes.py, repo/snapshots.py, repo/group_snapshots.py), so two racing requests
cannot both move it.
"""

from __future__ import annotations

from enum import StrEnum

from berth_shared.lifecycle import GONE, Lifecycle


class VolumeStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    EXPANDING = "expanding"
    DELETING = "deleting"
    ERROR = "error"


class SnapshotStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    DELETING = "deleting"
    ERROR = "error"


# A group snapshot's members are snapshots that move with it, in the same transaction:
# created, deleted and failed together, never one by one.
GroupSnapshotStatus = SnapshotStatus

V = VolumeStatus
S = SnapshotStatus

VOLUME = Lifecycle(
    "volume",
    VolumeStatus,
    [
        ("created", V.CREATING, V.AVAILABLE),
        # A failed create is rolled back: the record goes with its reservations.
        ("create_failed", V.CREATING, GONE),
        ("expand", V.AVAILABLE, V.EXPANDING),
        ("expanded", V.EXPANDING, V.AVAILABLE),
        ("expand_failed", V.EXPANDING, V.AVAILABLE),
        ("delete", V.AVAILABLE, V.DELETING),
        ("delete", V.ERROR, V.DELETING),
        ("deleted", V.DELETING, GONE),
        # The backend refused (RBD: the image still has watchers): kept, and deletable again.
        ("delete_failed", V.DELETING, V.ERROR),
    ],
)

_SNAPSHOT_TRANSITIONS: list[tuple[str, str, str | None]] = [
    ("created", S.CREATING, S.AVAILABLE),
    ("create_failed", S.CREATING, GONE),
    ("delete", S.AVAILABLE, S.DELETING),
    ("delete", S.ERROR, S.DELETING),
    ("deleted", S.DELETING, GONE),
    ("delete_failed", S.DELETING, S.ERROR),
]
SNAPSHOT = Lifecycle("snapshot", SnapshotStatus, _SNAPSHOT_TRANSITIONS)
# The same table: each event that moves a group snapshot moves its members alike.
GROUP_SNAPSHOT = Lifecycle("group snapshot", GroupSnapshotStatus, _SNAPSHOT_TRANSITIONS)

# Only an available volume (or snapshot) is a source: of a snapshot, or of a new volume.
SOURCE_VOLUME_STATUSES = frozenset({V.AVAILABLE})
SOURCE_SNAPSHOT_STATUSES = frozenset({S.AVAILABLE})

"""The volume and snapshot lifecycles (pure), as a table: every (status, event) pair either
moves to the listed status or is refused."""

from __future__ import annotations

from typing import get_args

import pytest

from berth_provisioner.lifecycle import (
    SNAPSHOT,
    SOURCE_SNAPSHOT_STATUSES,
    SOURCE_VOLUME_STATUSES,
    VOLUME,
    SnapshotStatus,
    VolumeStatus,
)
from berth_shared.lifecycle import GONE
from berth_shared.messages import provisioner as contract
from berth_testing.lifecycle import Table, check, every_pair, table_of

VOLUME_TABLE: Table = {
    ("creating", "created"): "available",
    ("creating", "create_failed"): GONE,
    ("available", "expand"): "expanding",
    ("expanding", "expanded"): "available",
    ("expanding", "expand_failed"): "available",
    ("available", "delete"): "deleting",
    ("error", "delete"): "deleting",
    ("deleting", "deleted"): GONE,
    ("deleting", "delete_failed"): "error",
}

SNAPSHOT_TABLE: Table = {
    ("creating", "created"): "available",
    ("creating", "create_failed"): GONE,
    ("available", "delete"): "deleting",
    ("error", "delete"): "deleting",
    ("deleting", "deleted"): GONE,
    ("deleting", "delete_failed"): "error",
}


@pytest.mark.parametrize(("state", "event", "expected"), every_pair(VOLUME_TABLE, VolumeStatus))
def test_volume_transitions(state: str, event: str, expected: str | None) -> None:
    check(VOLUME, state, event, expected)


@pytest.mark.parametrize(("state", "event", "expected"), every_pair(SNAPSHOT_TABLE, SnapshotStatus))
def test_snapshot_transitions(state: str, event: str, expected: str | None) -> None:
    check(SNAPSHOT, state, event, expected)


def test_the_tables_are_the_whole_lifecycles() -> None:
    assert table_of(VOLUME) == VOLUME_TABLE
    assert table_of(SNAPSHOT) == SNAPSHOT_TABLE


def test_statuses_are_the_bus_contracts() -> None:
    assert set(VolumeStatus) == set(get_args(contract.VolumeStatus))
    assert set(SnapshotStatus) == set(get_args(contract.SnapshotStatus))


def test_busy_volumes_are_neither_deleted_nor_expanded_nor_sources() -> None:
    for busy in ("creating", "expanding", "deleting"):
        assert not VOLUME.allows(busy, "delete")
        assert not VOLUME.allows(busy, "expand")
        assert busy not in SOURCE_VOLUME_STATUSES
    assert {"available"} == SOURCE_VOLUME_STATUSES
    assert {"available"} == SOURCE_SNAPSHOT_STATUSES

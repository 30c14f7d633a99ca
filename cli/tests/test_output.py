"""Tables at 80 columns and piped: ids whole, columns hidden or wrapped, nothing squeezed away."""

from __future__ import annotations

from typing import Any

from berth_cli.output import Column, cell, render_table
from berth_cli.resources import CLUSTER_COLS, VOLUME_COLS


def volume(i: int, name: str = "db-0") -> dict[str, Any]:
    return {
        "id": f"vol-{i:032x}",
        "name": name,
        "tenant": "team-payments",
        "size_gib": 10,
        "volume_type": "replicated-ssd",
        "zone": "eu-west-1a",
        "cluster_id": f"cl-{i:032x}",
        "status": "available",
        "created_at": "2026-11-27T16:20:13.435657Z",
    }


def column(lines: list[str], header: str, after: str | None) -> str:
    """A column's text across its wrapped lines, re-joined."""
    start = lines[0].index(header)
    end = lines[0].index(after) if after else None
    return "".join(line[start:end].strip() for line in lines[1:])


def test_volumes_at_80_columns_keep_ids_and_the_useful_columns() -> None:
    rows = [volume(1), volume(2, "a-much-longer-volume-name-for-search")]
    lines, hidden = render_table(rows, VOLUME_COLS, 80)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["ID", "NAME", "GiB", "TYPE", "STATUS"]
    assert hidden == ["CREATED", "CLUSTER", "ZONE", "TENANT"]  # least useful first
    text = "\n".join(lines)
    for row in rows:
        assert row["id"] in text, "an id is never cut"
    # Long text wraps within its column instead of pushing the table past 80.
    assert column(lines, "NAME", "GiB") == "db-0" + rows[1]["name"] and len(lines) > 3
    assert column(lines, "TYPE", "STATUS") == "replicated-ssd" * 2
    assert column(lines, "STATUS", None) == "available" * 2


def test_piped_output_is_never_squeezed() -> None:
    rows = [volume(1)]
    lines, hidden = render_table(rows, VOLUME_COLS, None)
    assert hidden == []
    assert lines[0].split() == [c.header for c in VOLUME_COLS]
    assert lines[1].split()[0] == rows[0]["id"] and rows[0]["cluster_id"] in lines[1]
    assert "2026-11-27 16:20:13" in lines[1]


def test_ids_overflow_rather_than_being_cut() -> None:
    cols = [Column("ID", "id", id=True), Column("OTHER", "other", id=True), Column("NOTE", "note")]
    rows = [{"id": "x" * 50, "other": "y" * 40, "note": "some words that can wrap"}]
    lines, hidden = render_table(rows, cols, 60)
    assert "x" * 50 in lines[1] and "y" * 40 in lines[1]
    assert hidden == []
    assert any("wrap" in line for line in lines[1:])


def test_clusters_show_their_fill() -> None:
    row: dict[str, Any] = {
        "id": f"cl-{1:032x}",
        "name": "ceph-ssd-2",
        "state": "active",
        "backend": "rbd",
        "zone": "default",
        "volume_types": ["replicated-ssd", "ec-hdd"],
        "capacity_gib": 1000,
        "overcommit_ratio": 2.0,
        "provisioned_gib": 500,
        "volume_count": 7,
        "backend_free_bytes": 900 * 2**30,
        "created_at": "2026-11-27T16:20:13Z",
    }
    lines, _ = render_table([row], CLUSTER_COLS, 80)
    assert all(len(line) <= 80 for line in lines), lines
    assert "ceph-ssd-2" in lines[1] and "25%" in lines[1] and row["id"] in lines[1]
    assert column(lines, "TYPES", "FILL") == "replicated-ssd,ec-hdd"
    wide, hidden = render_table([row], CLUSTER_COLS, None)
    assert hidden == [] and "900.0" in wide[1] and "500/1000" in wide[1]


def test_cells() -> None:
    assert cell(None) == "-" and cell([]) == "-" and cell(["a", "b"]) == "a,b"
    assert cell(True) == "yes" and cell(2.50) == "2.5" and cell({"a": 1}) == "a=1"

"""Table tests of a lifecycle (`berth_shared.lifecycle.Lifecycle`): a service's test lists
the allowed transitions as a table; every other (state, event) pair must be refused."""

from __future__ import annotations

from enum import Enum

import pytest

from berth_shared.lifecycle import Lifecycle, TransitionNotAllowed

REFUSED = "refused"
Table = dict[tuple[str, str], str | None]


def every_pair(table: Table, states: type[Enum]) -> list[tuple[str, str, str | None]]:
    """Each state with each event of the table, and what it leads to (REFUSED if not listed)."""
    events = sorted({e for _, e in table})
    return [(s.value, e, table.get((s.value, e), REFUSED)) for s in states for e in events]


def check(machine: Lifecycle, state: str, event: str, expected: str | None) -> None:
    """The machine allows exactly the table's pairs, each to the table's target."""
    if expected == REFUSED:
        assert not machine.allows(state, event)
        with pytest.raises(TransitionNotAllowed):
            machine.target(state, event)
    else:
        assert machine.allows(state, event)
        assert machine.target(state, event) == expected


def table_of(machine: Lifecycle) -> Table:
    """The machine's transitions as a table, to compare with the test's: nothing unlisted."""
    return {(t.source, t.event): t.target for t in machine.transitions}

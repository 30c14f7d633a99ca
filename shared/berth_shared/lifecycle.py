"""Allowed state transitions of a resource, as a table (pure; no I/O).

Each service declares its resources' lifecycles with `Lifecycle` (see the services'
`lifecycle.py`); the repositories move a row only along a transition declared there, with
a conditional UPDATE on the state read, so two writers racing cannot both move it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GONE = None  # the target of a transition that removes the record


@dataclass(frozen=True)
class Transition:
    event: str
    source: str
    target: str | None  # None (GONE): the record is removed


class TransitionNotAllowed(ValueError):
    def __init__(self, resource: str, state: str, event: str) -> None:
        super().__init__(f"{resource}: no transition {event!r} from {state!r}")
        self.resource = resource
        self.state = state
        self.event = event


class Lifecycle:
    def __init__(
        self, resource: str, states: Iterable[str], transitions: Iterable[tuple[str, str, str | None]]
    ) -> None:
        self.resource = resource
        self.states = frozenset(states)
        self._next: dict[tuple[str, str], str | None] = {}
        for event, source, target in transitions:
            unknown = {source, target} - self.states - {GONE}
            if unknown:
                raise ValueError(f"{resource}: transition {event!r} names unknown states {sorted(map(str, unknown))}")
            if (event, source) in self._next:
                raise ValueError(f"{resource}: transition {event!r} from {source!r} declared twice")
            self._next[(event, source)] = target

    @property
    def transitions(self) -> list[Transition]:
        return [Transition(e, s, t) for (e, s), t in self._next.items()]

    def allows(self, state: str, event: str) -> bool:
        return (event, state) in self._next

    def target(self, state: str, event: str) -> str | None:
        """The state `event` moves a record in `state` to (GONE: removed); raises
        TransitionNotAllowed when the lifecycle has no such transition."""
        try:
            return self._next[(event, state)]
        except KeyError:
            raise TransitionNotAllowed(self.resource, state, event) from None

    def sources(self, event: str) -> frozenset[str]:
        """Every state `event` may start from."""
        return frozenset(s for (e, s) in self._next if e == event)

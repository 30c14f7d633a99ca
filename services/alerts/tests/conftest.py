from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from berth_shared.natsserver import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A bus of this test's own. A new alerts consumer replays the event stream (up to
    event_max_age_s back, so that a fresh deployment misses nothing), and the session's
    stream holds every earlier test's events: on it, a test counting the messages its
    messenger received would count theirs too."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()

"""Fixtures of the CLI tests: each gets its own stack registry, so that no `berth up`
running on this machine (a developer's, another test's) is ever found by discovery; and real
service apps served by uvicorn on free ports, for the CLI to talk to over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from berth_shared.natsserver import free_port


@contextmanager
def serve(app: FastAPI, timeout: float = 30.0) -> Iterator[str]:
    """A service app in a uvicorn server on a background thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, name=app.title, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"{app.title} did not start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"{app.title} not started after {timeout}s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        assert not thread.is_alive(), f"{app.title} did not stop"


@pytest.fixture
def serve_app() -> Iterator[Callable[[FastAPI], str]]:
    """Serve apps for the test's duration (stopped in reverse order); returns each base URL."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve(app))


@pytest.fixture(autouse=True)
def own_stack_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    for var in ("BERTH_DATA_DIR", "BERTH_URL", "BERTH_TOKEN", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    return state

"""Every CLI test gets its own stack registry, so that no `berth up` running on this machine
(a developer's, another test's) is ever found by discovery."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_stack_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    for var in ("BERTH_DATA_DIR", "BERTH_URL", "BERTH_TOKEN", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    return state

"""The node agent reads its settings through the shared loader (BERTH_* variables, flags on
top) and logs through the shared, secret-scrubbing JSON logs, like every service."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from berth_attacher.agent import _settings
from berth_shared.natsserver import NatsServer
from berth_shared.node import CephClientSpec
from berth_testing import eventually


def test_flags_override_the_berth_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_NODE_ID", "from-env")
    monkeypatch.setenv("BERTH_NODE_TOKEN", "tok-env")
    monkeypatch.setenv("BERTH_HEARTBEAT_INTERVAL_S", "7")
    monkeypatch.setenv("BERTH_RBD_USER", "berth-node-rbd")
    s = _settings(["--node-id", "n1", "--cephfs-user", "cf", "--ceph-conf", "/etc/x.conf"])
    assert (s.node_id, s.heartbeat_interval_s, s.heartbeat_token(), s.zone) == ("n1", 7.0, "tok-env", None)
    assert s.configured_ceph() == {
        "rbd": CephClientSpec("/etc/x.conf", "/etc/ceph/ceph.client.berth-node-rbd.keyring", "berth-node-rbd"),
        "cephfs": CephClientSpec("/etc/x.conf", "/etc/ceph/ceph.client.cf.keyring", "cf"),
    }
    monkeypatch.delenv("BERTH_RBD_USER")
    assert _settings(["--token", "tok-flag"]).heartbeat_token() == "tok-flag"
    assert _settings([]).configured_ceph() == {}  # the Ceph conventions, per publish context


def failed_beat(err: Path) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        for line in err.read_text().splitlines():
            entry: dict[str, Any] = json.loads(line)  # every line is JSON
            if "heartbeat from agent-log-test failed" in entry["msg"]:
                return entry
        return None

    return probe


async def test_the_agent_logs_json_with_secrets_scrubbed(nats_server: NatsServer, tmp_path: Path) -> None:
    """No attacher answers: the agent's heartbeat fails and it says so, as one JSON line
    (the shared formatter), never echoing its token."""
    token = "tok-very-secret-123"
    env = os.environ | {
        "BERTH_NATS_URL": nats_server.url,
        "BERTH_NODE_TOKEN": token,
        "BERTH_HEARTBEAT_INTERVAL_S": "0.2",
        "BERTH_DATA_DIR": str(tmp_path),
        "BERTH_COMMAND_TIMEOUT_S": "0.5",
    }
    err = tmp_path / "agent.err"
    with err.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "berth_attacher.agent", "--node-id", "agent-log-test", env=env, stderr=out
        )
        try:
            entry = await eventually(failed_beat(err), within=20, what="a failed heartbeat logged")
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
    assert entry is not None and entry["service"] == "node-agent" and entry["level"] == "warning"
    assert token not in err.read_text()

"""`berth up` as a user runs it: the whole embedded stack in a subprocess, Ctrl-C, start again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nats
import pytest

from berth_csi.server import probe
from berth_shared.natsserver import free_port
from berth_shared.settings import SERVICES

pytestmark = pytest.mark.slow

BERTH = str(Path(sys.executable).parent / "berth")
START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def clean_env() -> dict[str, str]:
    """The embedded default, whatever the test run's BERTH_* settings (e.g. PostgreSQL in CI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def descendants(pid: int) -> dict[int, str]:
    """Every process under `pid`, with its command line (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = cmdline(child)
                frontier.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def using(data_dir: Path) -> list[int]:
    """Processes whose command line or environment names the data directory."""
    needle = str(data_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if alive(int(entry.name)) and any(needle in (entry / f).read_bytes() for f in ("cmdline", "environ")):
                    found.append(int(entry.name))
    return found


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Up:
    """One `berth up` in the foreground of a subprocess; its output gathered by a thread."""

    def __init__(self, data_dir: Path, ports: dict[str, int]) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.lines: list[str] = []
        self.children: dict[int, str] = {}
        args = [BERTH, "up", "--data-dir", str(data_dir), "--nats-port", str(ports["nats"])]
        for service in SERVICES:
            args += [f"--{service}-port", str(ports[service])]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(), start_new_session=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"berth up exited with {self.proc.returncode}:\n{self.output}")
            return "berth is up" in self.output

        wait_for(up, START_TIMEOUT, f"berth up\n{self.output}")
        self.children = descendants(self.proc.pid)

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the foreground process group; the exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"berth up did not stop in {STOP_TIMEOUT}s:\n{self.output}") from None

    def kill(self) -> None:
        """Last resort after a failed test: nothing may outlive it."""
        ours = {**self.children, **descendants(self.proc.pid)}
        pids = [self.proc.pid, *(pid for pid, cmd in ours.items() if cmd and cmd == cmdline(pid))]  # no reused pid
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[[], Up]]:
    data_dir = tmp_path / "berth data"  # a space, as users' paths have
    ports = {"nats": free_port(), **{service: free_port() for service in SERVICES}}
    started: list[Up] = []

    def start() -> Up:
        up = Up(data_dir, ports)
        started.append(up)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.kill()


async def read_events(url: str, creds: Path, issued: dict[str, str]) -> list[tuple[str, str]]:
    """Connect anonymously (refused), then with the tenant's credentials: its events."""
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    nc = await nats.connect(url, user_credentials=str(creds), inbox_prefix=issued["inbox_prefix"])
    try:
        sub = await nc.jetstream().pull_subscribe(
            issued["filter_subject"], durable=issued["consumer"], stream=issued["stream"]
        )
        msgs = await sub.fetch(10, timeout=10)
        for msg in msgs:
            await msg.ack()
        return [(m.subject, json.loads(m.data)["subject"]) for m in msgs]
    finally:
        await nc.close()


def assert_stopped_cleanly(up: Up) -> None:
    assert up.interrupt() == 0, up.output
    assert "stopped." in up.output
    wait_for(lambda: not any(alive(pid) for pid in up.children), 10, f"leftover processes {up.children}")
    assert using(up.data_dir) == [], "no process of this stack is left"
    assert not (up.data_dir / "csi.sock").exists(), "the CSI adapter removed its socket"
    wait_for(lambda: not any(listening(port) for port in up.ports.values()), 10, f"ports still open {up.ports}")


def test_berth_up_serves_stops_cleanly_and_keeps_data(start_up: Callable[[], Up]) -> None:
    t0 = time.monotonic()
    up = start_up()
    up.wait_up()
    started_in = time.monotonic() - t0

    # Every service is ready where `berth up` says it listens; one nats-server and one process each.
    for service in SERVICES:
        url = f"http://127.0.0.1:{up.ports[service]}"
        assert url in up.output
        assert httpx.get(f"{url}/readyz", timeout=5).json()["status"] == "ready"
    assert f"nats://127.0.0.1:{up.ports['nats']}" in up.output
    commands = sorted(up.children.values())
    assert len(commands) == 2 + len(SERVICES), commands  # nats, the services, the CSI adapter
    assert sum("nats-server" in c for c in commands) == 1
    for service in SERVICES:
        assert sum(f"berth_{service}" in c for c in commands) == 1, commands
    assert sum("berth_csi" in c for c in commands) == 1, commands
    csi_socket = up.data_dir / "csi.sock"
    assert f"unix://{csi_socket}" in up.output
    assert probe(csi_socket), "the CSI adapter answers Probe on its socket"
    assert set(up.children) | {up.proc.pid} == set(using(up.data_dir)), "the leftover check sees every part"

    # A second `berth up` on the same data directory says so and leaves the first alone.
    second = subprocess.run(
        [BERTH, "up", "--data-dir", str(up.data_dir), "--nats-port", str(free_port())],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert second.returncode == 1, second
    assert "already running" in second.stderr and str(up.proc.pid) in second.stderr
    assert up.proc.poll() is None

    # The banner says how to reach it; `berth tokens` from any other directory finds it.
    prov = f"http://127.0.0.1:{up.ports['provisioner']}"
    assert f"export BERTH_URL={prov}" in up.output
    assert f"export BERTH_ATTACHER_URL=http://127.0.0.1:{up.ports['attacher']}" in up.output
    assert f"export BERTH_DATA_DIR='{up.data_dir}'" in up.output
    elsewhere = up.data_dir.parent / "elsewhere"
    elsewhere.mkdir()
    tokens_run = subprocess.run(
        [BERTH, "tokens", "--json"],
        capture_output=True, text=True, timeout=60, env=clean_env(), check=True, cwd=elsewhere,
    )  # fmt: skip
    tokens = json.loads(tokens_run.stdout)
    assert list(elsewhere.iterdir()) == [], "found, not made up"
    demo = {"Authorization": f"Bearer {tokens['demo']}"}
    resp = httpx.post(
        f"{prov}/v1/volumes", json={"name": "kept", "size_gib": 2, "volume_type": "standard"}, headers=demo, timeout=30
    )
    assert resp.status_code == 201, resp.text
    volume = resp.json()
    assert volume["status"] == "available"

    # NATS permissions are on: no one connects without credentials; the demo tenant's
    # subscriber credentials (berth events credentials) read its own events.
    creds = up.data_dir.parent / "demo.creds"
    issued = subprocess.run(
        [BERTH, "events", "credentials", "--out", str(creds), "--json"],
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=elsewhere,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    assert asyncio.run(read_events(f"nats://127.0.0.1:{up.ports['nats']}", creds, json.loads(issued.stdout))) == [
        ("berth.events.demo.volume.created", volume["id"])
    ]

    # The stack's NATS credentials, as `berth tokens` shows tokens: who, what, where.
    listed = subprocess.run(
        [BERTH, "nats", "creds", "--json"], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=elsewhere
    )
    identities = {row["identity"]: row for row in json.loads(listed.stdout)}
    assert set(identities) == {*SERVICES, "csi", "node", "admin"}
    assert all(Path(row["creds"]).is_relative_to(up.data_dir) for row in identities.values())
    shown = subprocess.run(
        [BERTH, "nats", "creds", "csi"], capture_output=True, text=True, env=clean_env(), cwd=elsewhere
    )
    assert shown.stdout == Path(identities["csi"]["creds"]).read_text()

    # Every part's real traffic so far (commands, events, leases, consumers) fit its permissions.
    violations = [
        line for line in (up.data_dir / "nats" / "nats-server.log").read_text().splitlines() if "Violation" in line
    ]
    assert violations == [], violations

    t1 = time.monotonic()
    assert_stopped_cleanly(up)
    stopped_in = time.monotonic() - t1

    # Start again: same tokens, same volume, and the CLI finds both through the data directory.
    again = start_up()
    again.wait_up()
    got = httpx.get(f"{prov}/v1/volumes/{volume['id']}", headers=demo, timeout=10)
    assert got.status_code == 200, got.text
    assert (got.json()["name"], got.json()["status"]) == ("kept", "available")
    listed = subprocess.run(
        [BERTH, "volumes", "list", "--json"],
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=elsewhere,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [v["id"] for v in json.loads(listed.stdout)["items"]] == [volume["id"]]
    assert_stopped_cleanly(again)
    print(f"berth up: ready in {started_in:.1f}s, stopped in {stopped_in:.1f}s")

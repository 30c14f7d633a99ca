"""`berth up`: the embedded stack (nats-server from the wheel, every service, SQLite, file
backend) in the foreground, all data under one directory."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from berth_cli import stackinfo
from berth_shared.auth import ensure_token_file
from berth_shared.natsauth import AuthMaterial
from berth_shared.natsserver import NatsServer
from berth_shared.settings import DEFAULT_PORTS, SERVICES, Settings

CSI = "csi"


class Interrupted(Exception):
    pass


@dataclass
class StackConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    nats_port: int = 4322
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))


class Stack:
    def __init__(self, cfg: StackConfig, echo: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.echo = echo
        self.data_dir = cfg.data_dir.resolve()
        # NATS with Berth's accounts and the bus contract's permissions, always.
        self.auth = AuthMaterial(self.data_dir / "nats-auth")
        self.nats = NatsServer(self.data_dir / "nats", port=cfg.nats_port, host=cfg.host, auth_conf=self.auth.auth_conf)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def service_env(self, service: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "BERTH_DATA_DIR": str(self.data_dir),
                "BERTH_NATS_URL": self.nats.url,
                "BERTH_NATS_CREDS": str(self.auth.creds(service)),
                "BERTH_HTTP_HOST": self.cfg.host,
            }
        )
        if service == "provisioner":  # it issues tenants' event-subscriber credentials
            env["BERTH_NATS_TENANT_ISSUER"] = str(self.auth.issuer_file)
        if service in self.cfg.ports:
            env["BERTH_HTTP_PORT"] = str(self.cfg.ports[service])
        if service == CSI:
            # Controller and node service for this host, calls in the demo tenant by default.
            env.update(
                {
                    "BERTH_CSI_ENDPOINT": str(self.csi_socket),
                    "BERTH_MODE": "both",
                    "BERTH_DEFAULT_TOKEN_NAME": "demo",
                }
            )
        return env

    @property
    def csi_socket(self) -> Path:
        return self.data_dir / "csi.sock"

    def start_service(self, service: str) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{service}.log", "ab") as log:
            self.procs[service] = subprocess.Popen(
                [sys.executable, "-m", f"berth_{service}"],
                env=self.service_env(service),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def is_ready(self, service: str) -> bool:
        if service == CSI:  # the CSI adapter is ready when its socket answers Probe
            from berth_csi.server import probe  # grpc and the CSI stubs: only when needed

            return bool(probe(self.csi_socket))
        try:
            return httpx.get(f"http://{self.cfg.host}:{self.cfg.ports[service]}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, service: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._stopping:  # Ctrl-C while starting: give up at once, down() cleans up
                raise Interrupted("interrupted while starting")
            proc = self.procs[service]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{service} exited with {proc.returncode}; see {self.data_dir / 'logs' / service}.log"
                )
            if self.is_ready(service):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{service} not ready after {timeout}s")

    def up(self) -> None:
        ensure_token_file(self.data_dir / "tokens.json")
        self.auth.ensure(Settings().events_stream)
        self.nats.start()
        self.echo(f"nats        {self.nats.url} (JetStream store {self.nats.store_dir})")
        self.echo(f"            accounts and permissions on; credentials: `berth nats creds` ({self.auth.dir})")
        for service in SERVICES:
            self.start_service(service)
        for service in SERVICES:
            self.wait_ready(service)
            self.echo(f"{service:<11} http://{self.cfg.host}:{self.cfg.ports[service]}  (OpenAPI at /docs)")
        self.start_service(CSI)  # after the attacher: its node side heartbeats from the start
        self.wait_ready(CSI)
        self.echo(f"{CSI:<11} unix://{self.csi_socket}  (CSI controller + node for this host)")
        self.echo(f"data        {self.data_dir}  (logs in {self.data_dir / 'logs'})")
        stackinfo.publish(self.data_dir, self.info())
        self.echo("")
        self.echo("The berth CLI finds this stack by itself; for other tools, or another shell's CLI:")
        for line in self.exports():
            self.echo(f"  {line}")
        self.echo("tokens: `berth tokens` prints the admin and demo tokens")
        self.echo("berth is up; Ctrl-C stops it.")

    def urls(self) -> dict[str, str]:
        return {service: f"http://{self.cfg.host}:{self.cfg.ports[service]}" for service in SERVICES}

    def info(self) -> dict[str, object]:
        """What `stack.json` says: how to reach every part (read by `berth_cli.stackinfo`)."""
        return {
            "pid": os.getpid(),
            "data_dir": str(self.data_dir),
            "nats_url": self.nats.url,
            "nats_auth": str(self.auth.dir),
            "urls": self.urls(),
            "csi_socket": str(self.csi_socket),
        }

    def exports(self) -> list[str]:
        """The exact shell lines that point a CLI or a script at this stack."""
        env = {"BERTH_DATA_DIR": str(self.data_dir), "BERTH_NATS_URL": self.nats.url}
        for service, url in self.urls().items():
            env["BERTH_URL" if service == "provisioner" else f"BERTH_{service.upper()}_URL"] = url
        return [f"export {key}={shlex.quote(value)}" for key, value in env.items()]

    def supervise(self) -> None:
        """Block until a signal; restart a service that dies on its own."""
        while not self._stopping:
            for service, proc in list(self.procs.items()):
                if proc.poll() is not None and not self._stopping:
                    self.echo(
                        f"{service} exited with {proc.returncode}; restarting (log: {self.data_dir}/logs/{service}.log)"
                    )
                    self.start_service(service)
            time.sleep(0.5)

    def down(self) -> None:
        self._stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for service, proc in self.procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.echo(f"{service} did not stop in 15 s; killing it")
                proc.kill()
                proc.wait()
        self.nats.stop()


def run_up(cfg: StackConfig, echo: Callable[[str], None] = print) -> None:
    lock = stackinfo.take_lock(cfg.data_dir)
    stack = Stack(cfg, echo)

    def on_signal(signum: int, _frame: object) -> None:
        stack._stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.up()
        stack.supervise()
    except Interrupted:
        pass
    finally:
        echo("stopping berth ...")
        stackinfo.withdraw(stack.data_dir)
        stack.down()
        lock.close()
        echo("stopped.")

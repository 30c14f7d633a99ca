"""Helpers for the cross-service fault tests: real service processes, JetStream reads,
and a look at a service's own database (outbox, operations) to know when it is quiet."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import func, select

from berth_provisioner import tables as pt
from berth_shared.db import Database, make_database
from berth_shared.natsserver import free_port
from berth_testing import eventually

T = TypeVar("T")
EVENTS_STREAM = "BERTH_EVENTS"


@dataclass
class ServiceProcess:
    """One Berth service run as a real process (`python -m berth_<service>`), restartable
    on the same data directory, port, database and schema."""

    service: str
    data_dir: Path
    nats_url: str
    token_file: Path
    database_url: str | None = None
    db_schema: str | None = None
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.service}-{self.data_dir.name}.log"

    def env(self, crash_at: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update(
            BERTH_DATA_DIR=str(self.data_dir),
            BERTH_NATS_URL=self.nats_url,
            BERTH_HTTP_PORT=str(self.port),
            BERTH_TOKEN_FILE=str(self.token_file),
            BERTH_LOG_JSON="false",
            BERTH_OUTBOX_POLL_INTERVAL_S="0.2",
        )
        if self.database_url:
            env["BERTH_DATABASE_URL"] = self.database_url
        if self.db_schema:
            env["BERTH_DB_SCHEMA"] = self.db_schema
        if crash_at:
            env["BERTH_CRASH_AT"] = crash_at
        env.update(self.extra_env)
        return env

    def start(self, crash_at: str | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_file, "ab") as log:
            log.write(f"\n=== start {self.starts} crash_at={crash_at}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"berth_{self.service}"],
                env=self.env(crash_at),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.base_url, timeout=1.0) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.service} exited with {self.proc.returncode}: {self.tail()}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.service} not ready within {within}s: {self.tail()}")

    async def wait_exit(self, within: float = 15.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.service} still running after {within}s: {self.tail()}")
            await asyncio.sleep(0.02)
        return int(self.proc.returncode)

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after a bounded wait; a no-op when not running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, token: str, timeout: float = 20.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    async def open_db(self) -> Database:
        """The service's own database, to look at its outbox and operations."""
        url = self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / f'{self.service}.db').resolve()}"
        return await make_database(url, self.db_schema or self.service)


async def backlog(db: Database) -> tuple[int, int]:
    """(unpublished outbox rows, pending operations) in a provisioner database."""
    async with db.sessions() as s:
        unpublished = (
            await s.execute(
                select(func.count())
                .select_from(pt.bus_tables.outbox)
                .where(pt.bus_tables.outbox.c.published_at.is_(None))
            )
        ).scalar_one()
        pending = (
            await s.execute(select(func.count()).select_from(pt.operations).where(pt.operations.c.state == "pending"))
        ).scalar_one()
    return int(unpublished), int(pending)


async def settled(proc: ServiceProcess) -> None:
    """Bounded wait until every operation finished and every outbox row went out."""
    db = await proc.open_db()
    try:
        await eventually(lambda: backlog(db), lambda b: b == (0, 0), what="operations and outbox drained")
    finally:
        await db.dispose()


async def stream_events(nats_url: str, subjects: str, stream: str = EVENTS_STREAM) -> list[dict[str, Any]]:
    """Every event now in `stream` on `subjects`, as (subject, msg id, CloudEvent JSON).

    Bodies that are not events are left out: the session's stream holds the garbage (not
    JSON, or JSON that is no event) that the consumers' bad-input tests publish to prove it
    gets parked."""
    import json

    nc = await nats.connect(nats_url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=10.0)
        sub = await js.pull_subscribe(subjects, stream=stream, config=config)
        info = await sub.consumer_info()
        left = info.num_pending or 0
        out: list[dict[str, Any]] = []
        while left > 0:
            try:
                msgs = await sub.fetch(min(256, left), timeout=2.0)
            except NatsTimeout:
                break
            for m in msgs:
                left -= 1
                try:
                    event = json.loads(m.data)
                except ValueError:
                    continue
                if not isinstance(event, dict) or "type" not in event or "subject" not in event:
                    continue
                out.append({"subject": m.subject, "msg_id": (m.headers or {}).get("Nats-Msg-Id"), "event": event})
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def volume_files(data_dir: Path, cluster: str = "local") -> list[str]:
    """Every file in the file backend's volume directory (partial files included), sorted."""
    root = data_dir / "clusters" / cluster / "volumes"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def expected_files(volume_ids: Iterable[str]) -> list[str]:
    """What `volume_files` must show: one `<id>.img` per record, nothing else."""
    return sorted(f"{vid}.img" for vid in volume_ids)

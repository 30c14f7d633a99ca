"""Watcher detection delay: seconds from a real leak in the embedded stack to its finding.

Starts `berth up` (the whole embedded stack, every setting at its default: orphans every
60 s, a backend orphan's grace 120 s) in a fresh data directory, waits for the watcher's
first orphans run, then leaks a volume the way a crashed create or a hand-made copy does:
a file in the local cluster's volume folder that no record knows. It polls the watcher's
findings (every 0.5 s) until the leak is reported, and prints per leak the delay to the
finding (its `confirmed_at`, the moment its `finding.opened` event is written) and to the
API showing it, against the bound the defaults give (interval + grace: a first sighting
within one interval, the confirming one past the grace), the 5-minute target and the
50-100 minutes of vSphere CNS. CPU: the stack's processes over the wait, per orphans run.

    .venv/bin/python bench/watcher_detection_delay.py             # one leak (up to ~3 min)
    .venv/bin/python bench/watcher_detection_delay.py --leaks 2   # one after the other
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from berth_shared.auth import read_tokens
from berth_shared.backends import build_backend
from berth_shared.natsserver import free_port
from berth_shared.settings import SERVICES
from berth_watcher.config import WatcherSettings

TARGET_S = 300.0
VSPHERE_S = (50 * 60.0, 100 * 60.0)
BERTH = str(Path(sys.executable).parent / "berth")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and every process under it (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, frontier = 0.0, [pid]
    while frontier:
        p = frontier.pop()
        total += stats.get(p, (0, 0.0))[1]
        frontier += [c for c, (parent, _) in stats.items() if parent == p]
    return total


async def orphans_runs(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await http.get("/v1/runs", params={"job": "orphans", "limit": 100})
    r.raise_for_status()
    return list(r.json()["items"])


async def measure(data_dir: Path, watcher_url: str, pid: int, leaks: int) -> list[dict[str, float]]:
    admin = read_tokens(data_dir / "tokens.json")["admin"]
    files = build_backend("file", {"root": str((data_dir / "clusters" / "local").resolve())})
    out: list[dict[str, float]] = []
    async with httpx.AsyncClient(base_url=watcher_url, headers={"Authorization": f"Bearer {admin}"}) as http:
        while not [r for r in await orphans_runs(http) if r["status"] == "complete"]:  # noqa: ASYNC110 - polling HTTP
            await asyncio.sleep(0.5)
        for _ in range(leaks):
            vid = f"vol-{uuid.uuid4().hex}"
            runs_before = len(await orphans_runs(http))
            cpu_before = tree_cpu_s(pid)
            leaked_at = datetime.now(UTC)
            start = time.monotonic()
            await files.create_volume(vid, 1 << 30)
            while True:
                r = await http.get("/v1/findings", params={"kind": "backend_orphan"})
                found = [f for f in r.json()["items"] if f["resource_id"] == vid]
                if found:
                    break
                await asyncio.sleep(0.5)
            seen_s = time.monotonic() - start
            confirmed = datetime.fromisoformat(found[0]["confirmed_at"])
            runs = len(await orphans_runs(http)) - runs_before
            cpu = tree_cpu_s(pid) - cpu_before
            out.append(
                {
                    "finding_s": round((confirmed - leaked_at).total_seconds(), 1),
                    "api_s": round(seen_s, 1),
                    "orphans_runs": runs,
                    "cpu_s": round(cpu, 2),
                    "cpu_per_run_s": round(cpu / max(1, runs), 3),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaks", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    defaults = WatcherSettings.model_fields
    interval = float(defaults["orphans_interval_s"].default)
    grace = float(defaults["grace_backend_orphan_s"].default)
    bound = interval + grace
    ports = {s: free_port() for s in SERVICES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    with tempfile.TemporaryDirectory(prefix="berth-delay-") as tmp:
        data_dir = Path(tmp) / "berth"
        cmd = [BERTH, "up", "--data-dir", str(data_dir), "--nats-port", str(free_port())]
        for service in SERVICES:
            cmd += [f"--{service}-port", str(ports[service])]
        log = open(Path(tmp) / "up.log", "w")  # noqa: SIM115 - closed below, after the stack
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            watcher = f"http://127.0.0.1:{ports['watcher']}"
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{watcher}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"berth up did not come up:\n{(Path(tmp) / 'up.log').read_text()[-3000:]}")
                time.sleep(0.2)
            results = asyncio.run(measure(data_dir, watcher, proc.pid, args.leaks))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        print(json.dumps({"interval_s": interval, "grace_s": grace, "results": results, "load": load}))
        return
    print(f"watcher detection delay, embedded stack, defaults: orphans every {interval:.0f} s, grace {grace:.0f} s")
    for i, r in enumerate(results, 1):
        print(
            f"  leak {i}: finding after {r['finding_s']} s (API shows it after {r['api_s']} s); "
            f"bound {bound:.0f} s: x{r['finding_s'] / bound:.2f}; "
            f"target {TARGET_S:.0f} s: x{r['finding_s'] / TARGET_S:.2f}; "
            f"vSphere CNS {VSPHERE_S[0] / 60:.0f}-{VSPHERE_S[1] / 60:.0f} min: "
            f"x{r['finding_s'] / VSPHERE_S[0]:.3f}-{r['finding_s'] / VSPHERE_S[1]:.3f}"
        )
        runs, cpu, per_run = r["orphans_runs"], r["cpu_s"], r["cpu_per_run_s"]
        print(f"          {runs} orphans runs meanwhile, stack CPU {cpu} s ({per_run} s/run)")
    print(f"  load average {load}")
    if any(r["finding_s"] > TARGET_S for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

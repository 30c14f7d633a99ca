"""The failover benchmark in its short mode (aggressive policy, 3 runs per case: the holder
partitioned from NATS, and the holder's node service frozen), so that CI runs it: every
failover must complete, with no invariant violation and no late write. The 5 s target is
the full benchmark's (`--check`, recorded in docs/benchmarks.md); here the bound is a smoke
test's, loose enough for a machine busy with other suites (the fence spawns host tools)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from berth_testing import loop_skip_reason
from berth_testing.netns import netns_skip_reason

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(loop_skip_reason() is not None, reason=loop_skip_reason() or ""),
]

BENCH = Path(__file__).resolve().parent.parent / "bench" / "failover.py"


def test_failover_benchmark_short_mode(db_url: str | None) -> None:
    why = netns_skip_reason()
    if why:
        pytest.skip(why)
    argv = [sys.executable, str(BENCH), "--short", "--json"]
    if db_url:
        argv += ["--database-url", db_url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout)
    assert [c["case"] for c in report["cases"]] == ["partition", "silent"], report
    for case in report["cases"]:
        assert case["runs"] == 3, case
        assert case["failures"] == [] and case["late_writes"] == 0, case
        assert case["invariant_violations"] == 0, case
        assert case["checker"]["max_grants"] == 1 and case["checker"]["max_mounts"] == 1, case
        assert case["written_s"]["p99"] < 15.0, case

"""The failover benchmark in its short mode (3 runs, dead after 2 s), so that CI runs it:
it must complete every failover with no invariant violation and within the target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from berth_testing import loop_skip_reason

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(loop_skip_reason() is not None, reason=loop_skip_reason() or ""),
]

BENCH = Path(__file__).resolve().parent.parent / "bench" / "failover.py"


def test_failover_benchmark_short_mode(db_url: str | None) -> None:
    argv = [sys.executable, str(BENCH), "--short", "--json", "--check"]
    if db_url:
        argv += ["--database-url", db_url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout)
    assert report["runs"] == 3, report
    assert report["failures"] == [], report
    assert report["invariant_violations"] == 0, report
    assert report["checker"]["max_grants"] == 1 and report["checker"]["max_mounts"] == 1, report
    assert report["mounted_s"]["p99"] < 30.0, report

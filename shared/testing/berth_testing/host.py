"""Whether this host can run the tests that need root, loop devices and real mounts."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def loop_skip_reason() -> str | None:
    """Why tests with real loop devices and mounts cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root: the file backend stages volumes on real loop devices and mounts"
    if not os.path.exists("/dev/loop-control"):
        return "needs /dev/loop-control: no loop device support on this host"
    return None


needs_loop = pytest.mark.skipif(loop_skip_reason() is not None, reason=loop_skip_reason() or "")


def apt_install(packages: list[str], timeout: float = 600.0) -> str | None:
    """Install Debian packages (apt-get update first); None on success, else why not (not
    root, no apt-get, or the command failed or timed out)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{' '.join(packages)}: installing needs apt-get as root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"{' '.join(cmd)} timed out after {timeout}s"
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}"
    return None

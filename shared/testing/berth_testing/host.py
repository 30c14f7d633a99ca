"""Whether this host can run the tests that need root, loop devices and real mounts."""

from __future__ import annotations

import os

import pytest


def loop_skip_reason() -> str | None:
    """Why tests with real loop devices and mounts cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root: the file backend stages volumes on real loop devices and mounts"
    if not os.path.exists("/dev/loop-control"):
        return "needs /dev/loop-control: no loop device support on this host"
    return None


needs_loop = pytest.mark.skipif(loop_skip_reason() is not None, reason=loop_skip_reason() or "")

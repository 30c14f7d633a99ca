"""`berth_shared`'s subpackages have a curated public surface (their `__init__`): code outside
the library imports from it, never from a subpackage's modules, so a module can be split or
renamed without touching every service. The backend implementations are the one exception:
they load their client libraries lazily and are imported by name only where one is needed."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("backends", "bus", "db", "natsauth", "node", "operations")
# Modules importable by name: one backend implementation each (and its constants, the Ceph
# backends' shared client helpers, and the file backend's cgroup throttle, `blkio`).
BY_NAME = {
    f"berth_shared.backends.{m}"
    for m in ("rbd", "cephfs", "ceph_common", "cinder", "manila", "file", "blkio", "openstack_common")
}


def _outside_sources() -> list[Path]:
    roots = [ROOT / "services", ROOT / "cli", ROOT / "bench", ROOT / "tests", ROOT / "shared" / "testing"]
    return [p for r in roots for p in r.rglob("*.py") if ".venv" not in p.parts]


def deep_imports(source: str) -> list[str]:
    """The `berth_shared.<subpackage>.<module>` paths a source imports from."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if len(parts) > 2 and parts[0] == "berth_shared" and parts[1] in SUBPACKAGES:
                found.append(node.module)
    return found


def test_the_checker_finds_a_deep_import() -> None:
    assert deep_imports("from berth_shared.bus.lease import Lease\nfrom berth_shared.bus import Bus\n") == [
        "berth_shared.bus.lease"
    ]


def test_services_import_berth_shared_subpackages_from_their_surface() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _outside_sources()
        for module in deep_imports(path.read_text())
        if module not in BY_NAME
    ]
    assert offenders == []


def test_each_surface_exports_what_it_lists() -> None:
    for name in SUBPACKAGES:
        package = importlib.import_module(f"berth_shared.{name}")
        missing = [n for n in package.__all__ if not hasattr(package, n)]
        assert missing == [], name

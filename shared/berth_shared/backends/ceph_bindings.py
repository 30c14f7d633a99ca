"""Load Ceph's Python bindings (rados, rbd, cephfs) from the distribution's packages.

The bindings are C extensions built against the system's librados/librbd/libcephfs, so
they come from the OS packages (Debian: python3-rados, python3-rbd, python3-cephfs), not
from PyPI. Putting `/usr/lib/python3/dist-packages` on `sys.path` would let every Debian
Python package shadow the venv's own (pydantic, yaml, ...), so we load exactly these three
modules by file path instead, and only once.
"""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import os
import sys
import threading
from types import ModuleType
from typing import Any

from berth_shared.backends.base import BackendError

# Where Debian and Ubuntu put them; BERTH_CEPH_PYTHON_PATH overrides (other distributions).
DEFAULT_PATHS = ("/usr/lib/python3/dist-packages", "/usr/lib64/python3/site-packages", "/usr/lib/python3/site-packages")
INSTALL_HINT = "apt-get install python3-rados python3-rbd python3-cephfs"

_lock = threading.Lock()


class CephBindingsMissing(BackendError):
    code = "failed_precondition"
    status = 409
    title = "Ceph Python bindings are not installed"


def _search_paths() -> list[str]:
    env = os.environ.get("BERTH_CEPH_PYTHON_PATH")
    return [p for p in (env.split(os.pathsep) if env else DEFAULT_PATHS) if p]


def _find(name: str) -> str | None:
    tag = sys.implementation.cache_tag  # e.g. cpython-311
    for base in _search_paths():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = os.path.join(base, name + suffix)
            if os.path.exists(candidate):
                return candidate
        # A build for another minor version would fail to load: say so instead of guessing.
        others = glob.glob(os.path.join(base, f"{name}.cpython-*.so"))
        if others:
            raise CephBindingsMissing(
                f"Ceph binding {name!r} in {base} is built for another Python ({os.path.basename(others[0])}); "
                f"this is {tag}",
                reason="ceph_bindings_missing",
            )
    return None


def load(name: str) -> ModuleType:
    """Import one of `rados`, `rbd`, `cephfs`; rbd and cephfs need rados loaded first."""
    if name not in ("rados", "rbd", "cephfs"):
        raise ValueError(f"not a Ceph binding: {name}")
    with _lock:
        if name in sys.modules:
            return sys.modules[name]
        if name != "rados" and "rados" not in sys.modules:
            # The Cython modules `cimport rados`: its module object must already be registered.
            _load_locked("rados")
        return _load_locked(name)


def _load_locked(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    path = _find(name)
    if path is None:
        raise CephBindingsMissing(
            f"Ceph Python binding {name!r} not found in {', '.join(_search_paths())}; install it ({INSTALL_HINT}) "
            "or set BERTH_CEPH_PYTHON_PATH",
            reason="ceph_bindings_missing",
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only on a broken install
        raise CephBindingsMissing(f"cannot load {path}", reason="ceph_bindings_missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules[name]
        raise CephBindingsMissing(f"cannot load {path}: {exc}", reason="ceph_bindings_missing") from exc
    return module


def rados() -> Any:
    """The `rados` module (typed Any: the bindings ship no type information)."""
    return load("rados")


def rbd() -> Any:
    return load("rbd")


def cephfs() -> Any:
    return load("cephfs")


def available() -> bool:
    try:
        load("rados")
        load("rbd")
    except CephBindingsMissing:
        return False
    return True

"""The OpenStack services the tests run (Keystone, Cinder, Manila), installed from PyPI
into a venv cached outside the checkout, keyed by the pins: a changed pin makes a new
venv, an unchanged one is reused as it is (measured here: about 70 s and 460 MB the first
time, nothing after).

Test-only support, like `ceph_fixture`: no service imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# Pinned: the fake Cinder driver and the wsgi entry points are not stable APIs.
PINS = (
    "keystone==30.0.0",
    "cinder==29.0.0",
    "manila==23.0.1",
    "openstacksdk==4.22.0",
    "keystonemiddleware==13.0.1",
    "gunicorn==27.0.1",
    "fixtures==4.3.2",  # cinder.tests.fake_driver imports it
    "psycopg2-binary==2.9.13",
)
CACHE_ENV = "BERTH_OPENSTACK_CACHE"
DEFAULT_CACHE = Path("/var/cache/berth-openstack")
# The Debian Ceph bindings the RBD and CephFS drivers import (built for this Python).
CEPH_MODULES = ("rados", "rbd", "cephfs")
CEPH_PY_FILES = ("ceph_argparse.py",)
CEPH_DIST = Path("/usr/lib/python3/dist-packages")
_DONE = ".berth-complete"


class OpenStackUnavailable(RuntimeError):
    """The OpenStack services cannot be installed or started here."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def pins_key() -> str:
    text = "\n".join((*PINS, sys.version.split()[0]))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def venv_path() -> Path:
    return cache_dir() / f"venv-{pins_key()}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer at a time across processes (parallel test sessions share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_venv(timeout: float = 1200.0) -> Path:
    """The venv for the current pins, installed if it is not complete yet; returns its path.

    A venv is complete only once its marker is written, after the last step: an install
    that was killed half way is removed and redone, never used.
    """
    venv = venv_path()
    if (venv / _DONE).exists():
        return venv
    with _locked(cache_dir() / ".install.lock"):
        if (venv / _DONE).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        base_python = getattr(sys, "_base_executable", sys.executable)
        _run([base_python, "-m", "venv", str(venv)], timeout)
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *PINS], timeout)
        _link_ceph_bindings(venv)
        (venv / _DONE).write_text("\n".join(PINS) + "\n")
        _remove_stale(venv)
    return venv


def _link_ceph_bindings(venv: Path) -> None:
    """Make exactly the Ceph bindings importable in the venv (not all of dist-packages,
    whose Debian packages would shadow the venv's own)."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    target = venv / "ceph-bindings"
    target.mkdir(exist_ok=True)
    found = 0
    for pattern in (*(f"{m}.cpython-*.so" for m in CEPH_MODULES), *CEPH_PY_FILES):
        for src in CEPH_DIST.glob(pattern):
            link = target / src.name
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(src)
            found += 1
    (site / "berth-ceph-bindings.pth").write_text(f"{target}\n")
    if found == 0:
        # Not fatal at install time: the fixture checks the import before starting.
        (venv / "ceph-bindings-missing").write_text(str(CEPH_DIST))


def _remove_stale(keep: Path) -> None:
    """Venvs of older pins go: each is about 460 MB."""
    for other in keep.parent.glob("venv-*"):
        if other != keep:
            shutil.rmtree(other, ignore_errors=True)


def _run(cmd: list[str], timeout: float) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise OpenStackUnavailable(f"{' '.join(cmd[:4])} ... timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise OpenStackUnavailable(f"{cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if "is ignored" not in line]
        raise OpenStackUnavailable(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {' / '.join(lines[-8:])}")

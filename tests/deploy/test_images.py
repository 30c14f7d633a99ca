"""The images: one Dockerfile for every service, built from the lock; and, where a Docker
engine runs, each image really built and started."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from berth_shared.settings import SERVICES

ROOT = Path(__file__).resolve().parents[2]
IMAGES = (*SERVICES, "csi")
PACKAGES = [ROOT / "shared", *(ROOT / "services" / s for s in IMAGES), ROOT / "cli"]


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = version
    return found


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    locked = pins()
    stale = []
    for package in PACKAGES:
        for dep in tomllib.loads((package / "pyproject.toml").read_text())["project"]["dependencies"]:
            req = Requirement(dep)
            name = canonicalize_name(req.name)
            if name.startswith("berth-"):
                continue
            version = locked.get(name)
            if version is None or not req.specifier.contains(version, prereleases=True):
                stale.append(f"{package.name}: {dep} (locked: {version})")
    assert not stale, f"deploy/constraints.txt is out of date, run scripts/lock.sh: {stale}"


def test_one_dockerfile_builds_every_image_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not list((ROOT / "services").glob("*/Dockerfile")), "one Dockerfile, not one per service"
    accepted = re.search(r'case "\$\{SERVICE\}" in ([a-z|]+)\)', dockerfile)
    assert accepted and set(accepted.group(1).split("|")) == set(IMAGES)
    assert "-c /src/deploy/constraints.txt" in dockerfile, "built from the lock"
    assert re.search(r"^USER 10001$", dockerfile, re.M), "unprivileged by default"
    for image in IMAGES:
        assert (ROOT / "services" / image / f"berth_{image}" / "__main__.py").exists()
        scripts = tomllib.loads((ROOT / "services" / image / "pyproject.toml").read_text())["project"]["scripts"]
        assert f"berth-{image}" in scripts, "the image's entry point `berth-service` links to it"


def docker_engine() -> str | None:
    """Why no image can be built here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no Docker engine runs here (`docker info`: {(probe.stderr or probe.stdout).strip()[:200]})"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("image", IMAGES)
def test_the_image_builds_and_starts(image: str) -> None:
    reason = docker_engine()
    if reason:
        pytest.skip(f"image build not tested: {reason}")
    tag = f"berth-{image}:test"
    subprocess.run(["docker", "build", "--build-arg", f"SERVICE={image}", "-t", tag, str(ROOT)], check=True)
    run = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", tag, "-c", f"id -u && python -c 'import berth_{image}'"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert run.stdout.split()[0] == "10001", "runs unprivileged"

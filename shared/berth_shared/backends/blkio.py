"""Per-device IO limits through the host's cgroups: the file backend's QoS.

A file volume's data path on its host is the loop device over its file, so limiting the
IO to that device limits the volume, whoever does it.

- **cgroup v2**: `io.max` of a cgroup whose parent enables the `io` controller. The root
  cgroup has no `io.max`, so v2 needs the cgroup that holds the workloads to be named
  (`qos_cgroup` in the cluster config, e.g. `/sys/fs/cgroup/kubepods.slice`).
- **cgroup v1**: `blkio.throttle.{read,write}_{bps,iops}_device`, which the root cgroup
  has, so the limit covers every process of the host (found by itself).

Neither expresses a total over reads and writes: a total is applied to each direction
(each at most the total), and the state read back says so by being per direction.
"""

from __future__ import annotations

import contextlib
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from berth_shared.backends.base import IoCounters, QosLimits

V1_FILES = {
    "read_bps": "blkio.throttle.read_bps_device",
    "write_bps": "blkio.throttle.write_bps_device",
    "read_iops": "blkio.throttle.read_iops_device",
    "write_iops": "blkio.throttle.write_iops_device",
}
V2_KEYS = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}
SECTOR = 512


@dataclass(frozen=True)
class Throttle:
    """Where limits go: one cgroup directory of either version."""

    version: Literal[1, 2]
    path: Path

    def describe(self) -> str:
        kind = "io.max" if self.version == 2 else "blkio throttle"
        return f"cgroup v{self.version} {kind} in {self.path}"


def _cgroup_mounts() -> list[tuple[str, Path, str]]:
    """(fstype, mount point, super options) of the cgroup file systems of this host."""
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = right.split()
            if len(parts) >= 3 and parts[0] in ("cgroup", "cgroup2"):
                found.append((parts[0], Path(left.split()[4]), parts[2]))
    return found


def find_throttle(configured: str | None) -> tuple[Throttle | None, str]:
    """The cgroup to put limits in, or None with the reason limits cannot be enforced."""
    if configured:
        path = Path(configured)
        if (path / "io.max").exists():
            return Throttle(2, path), ""
        if (path / V1_FILES["read_bps"]).exists():
            return Throttle(1, path), ""
        return None, f"qos_cgroup {configured} has neither io.max (cgroup v2) nor blkio throttle files (v1)"
    mounts = _cgroup_mounts()
    for fstype, mount, opts in mounts:
        if fstype == "cgroup" and "blkio" in opts.split(",") and (mount / V1_FILES["read_bps"]).exists():
            return Throttle(1, mount), ""
    for fstype, mount, _ in mounts:
        if fstype == "cgroup2":
            controllers = _read(mount / "cgroup.controllers").split()
            if "io" in controllers:
                return None, (
                    f"cgroup v2 io controller at {mount}: set qos_cgroup in the cluster config to the cgroup "
                    "holding the workloads (the root cgroup has no io.max)"
                )
    return None, "this host offers no cgroup IO controller (neither cgroup v2 io nor v1 blkio)"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def per_direction(limits: QosLimits) -> dict[str, int]:
    """The limits as the four per-direction values a cgroup holds (a total caps both)."""

    def lowest(*values: int | None) -> int | None:
        given = [v for v in values if v is not None]
        return min(given) if given else None

    wanted = {
        "read_bps": lowest(limits.read_bps, limits.bps),
        "write_bps": lowest(limits.write_bps, limits.bps),
        "read_iops": lowest(limits.read_iops, limits.iops),
        "write_iops": lowest(limits.write_iops, limits.iops),
    }
    return {k: v for k, v in wanted.items() if v is not None}


def device_number(device: str) -> str:
    """`7:3` for /dev/loop3."""
    return _read(Path("/sys/block") / Path(device).name / "dev").strip()


def apply(throttle: Throttle, device: str, limits: QosLimits) -> None:
    """Replace the device's limits in the cgroup with `limits` (empty: unlimited)."""
    dev = device_number(device)
    if not dev:
        raise OSError(f"{device} is not a block device of this host")
    wanted = per_direction(limits)
    if throttle.version == 2:
        values = " ".join(f"{V2_KEYS[k]}={wanted.get(k, 'max')}" for k in V2_KEYS)
        (throttle.path / "io.max").write_text(f"{dev} {values}\n")
        return
    for key, name in V1_FILES.items():
        # v1: a rule of 0 removes the device's rule.
        (throttle.path / name).write_text(f"{dev} {wanted.get(key, 0)}\n")


def read(throttle: Throttle, device: str) -> QosLimits:
    """The device's limits in the cgroup now, per direction."""
    dev = device_number(device)
    found: dict[str, int] = {}
    if throttle.version == 2:
        for line in _read(throttle.path / "io.max").splitlines():
            head, _, rest = line.partition(" ")
            if head != dev:
                continue
            for pair in rest.split():
                key, _, value = pair.partition("=")
                name = next((k for k, v in V2_KEYS.items() if v == key), None)
                if name and value != "max":
                    found[name] = int(value)
    else:
        for key, name in V1_FILES.items():
            for line in _read(throttle.path / name).splitlines():
                head, _, value = line.partition(" ")
                if head == dev and value.strip() not in ("", "0"):
                    found[key] = int(value)
    return QosLimits(**found)


def forget_device(device: str) -> None:
    """Remove every limit on the device's number, wherever Berth puts them (the v1 blkio
    root; any v2 cgroup's io.max). The kernel keeps a rule on the number after the loop is
    freed, so a new loop device would otherwise inherit the last volume's limits."""
    dev = device_number(device)
    if not dev:
        return
    for fstype, mount, opts in _cgroup_mounts():
        if fstype == "cgroup" and "blkio" in opts.split(","):
            for name in V1_FILES.values():
                if any(line.split(" ")[0] == dev for line in _read(mount / name).splitlines()):
                    with contextlib.suppress(OSError):
                        (mount / name).write_text(f"{dev} 0\n")
        elif fstype == "cgroup2":
            for io_max in glob.glob(f"{mount}/**/io.max", recursive=True):
                if any(line.split(" ")[0] == dev for line in _read(Path(io_max)).splitlines()):
                    with contextlib.suppress(OSError):
                        Path(io_max).write_text(f"{dev} rbps=max wbps=max riops=max wiops=max\n")


def loop_backing_files() -> dict[str, list[str]]:
    """{backing file: [/dev/loopN, ...]} for every loop device of the host (one sysfs scan)."""
    found: dict[str, list[str]] = {}
    for bf in glob.glob("/sys/block/loop*/loop/backing_file"):
        backing = _read(Path(bf)).strip().removesuffix(" (deleted)")
        if backing:
            found.setdefault(backing, []).append("/dev/" + bf.split("/")[3])
    return {k: sorted(v) for k, v in found.items()}


def counters(device: str) -> IoCounters | None:
    """The device's cumulative IO from /sys/block/<dev>/stat (None: no such device)."""
    fields = _read(Path("/sys/block") / os.path.basename(device) / "stat").split()
    if len(fields) < 7:
        return None
    return IoCounters(
        read_ops=int(fields[0]),
        write_ops=int(fields[4]),
        read_bytes=int(fields[2]) * SECTOR,
        write_bytes=int(fields[6]) * SECTOR,
    )

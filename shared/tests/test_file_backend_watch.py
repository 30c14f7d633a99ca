"""What the watcher asks of the file backend, on real files and (as root) real loop devices:
the detailed inventory, quarantine / restore / purge, QoS through the host's cgroups, and
per-volume IO counters."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from berth_shared.backends import QosLimits, blkio, build_backend
from berth_shared.backends.file import FileBackend
from berth_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from berth_shared.node import host
from berth_testing import needs_loop

MIB = 1 << 20


@pytest.fixture
def backend(tmp_path: Path) -> FileBackend:
    return FileBackend(tmp_path / "cluster")


@pytest.fixture
async def attached(backend: FileBackend) -> AsyncIterator[str]:
    """vol-1 on a real loop device."""
    await backend.create_volume("vol-1", 64 * MIB)
    device = host.attach_loop(backend.volume_path("vol-1"))
    try:
        yield device
    finally:
        host.detach_loop(device)


async def test_inventory_details(backend: FileBackend) -> None:
    before = time.time()
    await backend.create_volume("vol-1", MIB)
    partial = backend.volumes / "vol-2.img.partial"
    partial.write_bytes(b"half")
    items = {i.id: i for i in await backend.inventory()}
    assert set(items) == {"vol-1", "vol-2"}
    assert not items["vol-1"].partial and items["vol-2"].partial
    created = items["vol-1"].created_at
    assert created is not None and created.timestamp() >= before - 1
    assert items["vol-1"].users == () and items["vol-1"].tenant is None


async def test_quarantine_restore_purge(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", MIB)
    path = backend.volume_path("vol-1")
    path.write_bytes(b"precious")
    await backend.create_snapshot("snap-1", "vol-1")

    await backend.quarantine("volume", "vol-1")
    await backend.quarantine("volume", "vol-1")  # idempotent
    assert not path.exists()
    assert [i.id for i in await backend.inventory()] == ["snap-1"]
    trash = await backend.trash()
    assert [(t.kind, t.id, t.size_bytes) for t in trash] == [("volume", "vol-1", len(b"precious"))]
    assert trash[0].trashed_at is not None

    await backend.restore("volume", "vol-1")
    await backend.restore("volume", "vol-1")  # idempotent
    assert path.read_bytes() == b"precious", "a restore gives the data back untouched"
    assert await backend.trash() == []

    await backend.quarantine("snapshot", "snap-1")
    assert {(t.kind, t.id) for t in await backend.trash()} == {("snapshot", "snap-1")}
    await backend.purge("snapshot", "snap-1")
    await backend.purge("snapshot", "snap-1")  # idempotent
    assert await backend.trash() == []
    assert {i.id for i in await backend.inventory()} == {"vol-1"}


async def test_quarantine_edge_cases(backend: FileBackend) -> None:
    with pytest.raises(NotFound):
        await backend.quarantine("volume", "vol-none")
    with pytest.raises(NotFound):
        await backend.restore("volume", "vol-none")
    await backend.purge("volume", "vol-none")  # nothing there: nothing to do

    # A leftover partial file of a create that never finished is quarantined like a volume.
    backend.volumes.mkdir(parents=True)
    (backend.volumes / "vol-p.img.partial").write_bytes(b"x")
    await backend.quarantine("volume", "vol-p")
    assert [t.id for t in await backend.trash()] == ["vol-p"]
    await backend.restore("volume", "vol-p")
    assert backend.volume_path("vol-p").read_bytes() == b"x"

    # Restoring over a volume that was made again under the same id is refused.
    await backend.quarantine("volume", "vol-p")
    await backend.create_volume("vol-p", MIB)
    with pytest.raises(FailedPrecondition) as exc:
        await backend.restore("volume", "vol-p")
    assert exc.value.reason == "trash_conflict"
    with pytest.raises(ValueError):
        await backend.quarantine("volume", "../etc")


async def test_qos_not_enforced_without_a_loop_device(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", MIB)
    state = await backend.set_qos("vol-1", QosLimits(iops=100))
    assert not state.enforced
    assert state.detail.startswith("not enforced:")
    with pytest.raises(NotFound):
        await backend.get_qos("vol-none")
    with pytest.raises(InvalidArgument):
        QosLimits(iops=0)


def test_per_direction_mapping() -> None:
    assert blkio.per_direction(QosLimits(iops=100, write_iops=50, bps=10 * MIB)) == {
        "read_bps": 10 * MIB,
        "write_bps": 10 * MIB,
        "read_iops": 100,
        "write_iops": 50,
    }
    assert blkio.per_direction(QosLimits()) == {}


def test_config_names_a_cgroup(tmp_path: Path) -> None:
    backend = build_backend("file", {"root": str(tmp_path), "qos_cgroup": "/sys/fs/cgroup/kubepods.slice"})
    assert isinstance(backend, FileBackend) and backend.qos_cgroup == "/sys/fs/cgroup/kubepods.slice"
    with pytest.raises(InvalidArgument):
        build_backend("file", {"root": str(tmp_path), "qos_cgroup": "kubepods"})
    throttle, why = blkio.find_throttle(str(tmp_path))
    assert throttle is None and "neither io.max" in why


@needs_loop
async def test_in_use_volume_is_not_quarantined(backend: FileBackend, attached: str) -> None:
    items = {i.id: i for i in await backend.inventory()}
    assert items["vol-1"].users == (attached,)
    with pytest.raises(FailedPrecondition) as exc:
        await backend.quarantine("volume", "vol-1")
    assert exc.value.reason == "volume_in_use"
    assert backend.volume_path("vol-1").exists()


@needs_loop
async def test_qos_on_a_real_loop_device(backend: FileBackend, attached: str) -> None:
    throttle, why = blkio.find_throttle(None)
    if throttle is None:
        state = await backend.set_qos("vol-1", QosLimits(write_bps=4 * MIB))
        assert not state.enforced and why in state.detail
        pytest.skip(f"no cgroup IO controller here: {why}")
    try:
        state = await backend.set_qos("vol-1", QosLimits(bps=4 * MIB, write_iops=500))
        assert state.enforced, state.detail
        assert state.limits == QosLimits(read_bps=4 * MIB, write_bps=4 * MIB, write_iops=500)
        assert attached in state.detail
        assert (await backend.get_qos("vol-1")).limits == state.limits

        # The limit holds on the data path: 8 MiB of direct writes at 4 MiB/s take ~2 s.
        start = time.monotonic()
        chunk = mmap.mmap(-1, MIB)  # page aligned, as O_DIRECT wants
        fd = os.open(attached, os.O_WRONLY | os.O_DIRECT)
        try:
            for i in range(8):
                os.pwrite(fd, chunk, i * MIB)
        finally:
            os.close(fd)
        assert time.monotonic() - start >= 1.5

        counters = (await backend.io_counters())["vol-1"]
        assert counters.write_bytes >= 8 * MIB and counters.source == attached

        # Drift: a limit changed behind the watcher's back is seen by get_qos.
        blkio.apply(throttle, attached, QosLimits(write_bps=MIB))
        assert (await backend.get_qos("vol-1")).limits == QosLimits(write_bps=MIB)
    finally:
        cleared = await backend.set_qos("vol-1", QosLimits())
    assert cleared.limits == QosLimits()


@needs_loop
async def test_qos_in_a_named_cgroup_v2_writes_what_io_max_reads(tmp_path: Path, attached: str) -> None:
    """cgroup v2: the limits go to the `io.max` of the cgroup the cluster config names. A
    plain file stands in for it (hosts like this one, cgroup v1 with a v2 hierarchy without
    the io controller, have no io.max to write): what is checked is the line the kernel
    parses and reading it back, not enforcement (see the test above for that, on v1)."""
    cgroup = tmp_path / "kubepods.slice"
    cgroup.mkdir()
    (cgroup / "io.max").write_text("")
    v2 = FileBackend(tmp_path / "cluster", qos_cgroup=str(cgroup))
    dev = blkio.device_number(attached)
    state = await v2.set_qos("vol-1", QosLimits(iops=300, write_bps=MIB))
    assert (cgroup / "io.max").read_text() == f"{dev} rbps=max wbps={MIB} riops=300 wiops=300\n"
    assert state.enforced and "cgroup v2 io.max" in state.detail and attached in state.detail
    assert state.limits == QosLimits(read_iops=300, write_iops=300, write_bps=MIB), "a total caps each direction"
    assert (await v2.get_qos("vol-1")).limits == state.limits
    cleared = await v2.set_qos("vol-1", QosLimits())
    assert (cgroup / "io.max").read_text() == f"{dev} rbps=max wbps=max riops=max wiops=max\n"
    assert cleared.limits == QosLimits()

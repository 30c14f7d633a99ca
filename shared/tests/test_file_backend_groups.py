"""Group snapshots on the file backend: one cut across volumes, crash-safe, and frozen file
systems on this host's loop devices (what makes the cut consistent while pods write)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth_shared.backends import GroupSnapshots, group_snapshots
from berth_shared.backends.file import FileBackend
from berth_shared.backends.file_groups import thaw
from berth_shared.errors import FailedPrecondition, NotFound
from berth_shared.node import host, mounts
from berth_shared.node.run import run
from berth_testing import loop_skip_reason

MIB = 1 << 20
MEMBERS = {"snap-a": "vol-a", "snap-b": "vol-b"}


@pytest.fixture
def backend(tmp_path: Path) -> FileBackend:
    return FileBackend(tmp_path / "cluster")


async def _volumes(backend: FileBackend, data: dict[str, bytes]) -> None:
    for vol, content in data.items():
        await backend.create_volume(vol, 4 * MIB)
        with open(backend.volume_path(vol), "r+b") as f:
            f.write(content)


def _files(backend: FileBackend) -> list[str]:
    return sorted(str(p.relative_to(backend.root)) for p in backend.root.rglob("*") if p.is_file())


async def test_members_are_the_volumes_at_the_cut(backend: FileBackend) -> None:
    assert isinstance(backend, GroupSnapshots) and group_snapshots(backend) is backend
    await _volumes(backend, {"vol-a": b"A1", "vol-b": b"B1"})
    await backend.create_group_snapshot("gsnap-1", MEMBERS)
    for vol in ("vol-a", "vol-b"):
        with open(backend.volume_path(vol), "r+b") as f:
            f.write(vol[-1].upper().encode() + b"2")
    await backend.create_group_snapshot("gsnap-1", MEMBERS)  # repeated: nothing is taken again
    for member, vol in MEMBERS.items():
        assert backend.snapshot_path(member).read_bytes()[:2] == vol[-1].upper().encode() + b"1"
    # A member is a snapshot like any other: a volume is restored from it.
    await backend.create_volume_from_snapshot("vol-r", "snap-b", 4 * MIB)
    assert backend.volume_path("vol-r").read_bytes()[:2] == b"B1"
    inventory = {(i.kind, i.id) for i in await backend.inventory()}
    assert {("snapshot", "snap-a"), ("snapshot", "snap-b")} <= inventory
    for _ in range(2):  # idempotent
        await backend.delete_group_snapshot("gsnap-1", MEMBERS)
    assert _files(backend) == ["volumes/vol-a.img", "volumes/vol-b.img", "volumes/vol-r.img"]


async def test_a_missing_volume_makes_nothing(backend: FileBackend) -> None:
    await _volumes(backend, {"vol-a": b"A"})
    with pytest.raises(NotFound, match="vol-b"):
        await backend.create_group_snapshot("gsnap-1", MEMBERS)
    assert _files(backend) == ["volumes/vol-a.img"]


async def test_a_retry_after_a_crash_makes_one_cut(backend: FileBackend) -> None:
    await _volumes(backend, {"vol-a": b"A1", "vol-b": b"B1"})
    # Died in the middle of the copies (no manifest): one member copied, one half-way.
    backend.snapshot_path("snap-a").parent.mkdir(parents=True, exist_ok=True)
    backend.snapshot_path("snap-a").write_bytes(b"A0 from an earlier cut")
    backend.snapshot_path("snap-b").with_suffix(".img.partial").write_bytes(b"half")
    await backend.create_group_snapshot("gsnap-1", MEMBERS)
    assert [backend.snapshot_path(m).read_bytes()[:2] for m in MEMBERS] == [b"A1", b"B1"]
    await backend.delete_group_snapshot("gsnap-1", MEMBERS)

    # Died after the cut was complete (the manifest written), during the renames: the
    # retry only finishes them, it does not copy the volumes as they are now.
    await backend.create_group_snapshot("gsnap-2", MEMBERS)
    os.replace(backend.snapshot_path("snap-b"), backend.snapshot_path("snap-b").with_suffix(".img.partial"))
    with open(backend.volume_path("vol-b"), "r+b") as f:
        f.write(b"B2")
    await backend.create_group_snapshot("gsnap-2", MEMBERS)
    assert backend.snapshot_path("snap-b").read_bytes()[:2] == b"B1"
    assert not backend.snapshot_path("snap-b").with_suffix(".img.partial").exists()


# -- on this host's loop devices and mounts ----------------------------------------------


@contextlib.contextmanager
def _staged(backend: FileBackend, vol: str, workdir: Path, *, fs: bool = True) -> Iterator[str]:
    """Attach a volume's file as a node would; with `fs`, an ext4 mounted on it (yields the
    mount point, else the device)."""
    device = host.attach_loop(backend.volume_path(vol))
    target = str(workdir / f"mnt-{vol}")
    try:
        if fs:
            subprocess.run(["mkfs.ext4", "-q", device], check=True)
            mounts.mount(device, target)
        yield target if fs else device
    finally:
        thaw([device])  # a failed test must not leave a frozen file system to unmount
        mounts.umount(target)
        host.detach_loop(device)


def _write_synced(path: Path) -> None:
    """Write and sync in a bounded child: on a frozen file system that would wait forever."""
    run("sh", "-c", f"echo x > {path} && sync -f {path}", timeout=10)


def _read_member(backend: FileBackend, member: str, workdir: Path) -> str:
    device = host.attach_loop(backend.snapshot_path(member), readonly=True)
    target = str(workdir / f"check-{member}")
    try:
        mounts.mount(device, target, options=["ro", "noload"])
        return Path(target, "data").read_text()
    finally:
        mounts.umount(target)
        host.detach_loop(device)


async def test_mounted_file_systems_are_frozen_for_the_cut(backend: FileBackend, tmp_path: Path) -> None:
    if (why := loop_skip_reason()) is not None:
        pytest.skip(why)
    await backend.create_volume("vol-a", 64 * MIB)
    await backend.create_volume("vol-b", 64 * MIB)
    with _staged(backend, "vol-a", tmp_path) as a, _staged(backend, "vol-b", tmp_path) as b:
        # Written, not synced: in the file systems' caches, not yet in the volumes' files.
        # A plain copy of the files would miss it; the freeze flushes it into the cut.
        for mnt, text in ((a, "order 41"), (b, "payment for order 41")):
            Path(mnt, "data").write_text(text)
        await backend.create_group_snapshot("gsnap-1", MEMBERS)
        _write_synced(Path(a, "after"))  # thawed: the pods' writes go on
        # An attempt that died while vol-a was frozen: the next one leaves it thawed.
        (device,) = host.loops_backed_by(backend.volume_path("vol-a"))
        assert run(sys.executable, "-m", "berth_shared.node.freeze", "freeze", device).stdout.startswith("frozen")
        await backend.create_group_snapshot("gsnap-2", {"snap-a2": "vol-a"})
        _write_synced(Path(a, "after-2"))
    assert _read_member(backend, "snap-a", tmp_path) == "order 41"
    assert _read_member(backend, "snap-b", tmp_path) == "payment for order 41"


async def test_a_raw_block_member_in_use_is_refused(backend: FileBackend, tmp_path: Path) -> None:
    if (why := loop_skip_reason()) is not None:
        pytest.skip(why)
    await backend.create_volume("vol-a", 64 * MIB)
    await backend.create_volume("vol-b", 64 * MIB)
    with _staged(backend, "vol-a", tmp_path) as mnt, _staged(backend, "vol-b", tmp_path, fs=False) as device:
        with pytest.raises(FailedPrecondition, match=f"{device} carries no file system") as err:
            await backend.create_group_snapshot("gsnap-1", MEMBERS)
        assert err.value.reason == "group_snapshot_inconsistent"
        # Nothing made, and vol-a's file system was thawed again: it takes writes.
        assert not list(backend.snapshots.glob("snap-*"))
        _write_synced(Path(mnt, "still-writable"))

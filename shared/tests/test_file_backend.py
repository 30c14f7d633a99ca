"""The file backend's contract on real files: thin, idempotent, hole-preserving, crash-safe."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from berth_shared.backends import BackendError, InventoryItem, build_backend, validate_backend_config
from berth_shared.backends.file import FileBackend
from berth_shared.backends.file_copy import FICLONE, sparse_copy
from berth_shared.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange

GIB = 1 << 30
MIB = 1 << 20
BLOCK = 4096
# A few writes scattered over a 1 GiB volume: start, unaligned middle, a block straddle, the end.
WRITES = {0: b"head" * 1024, 300 * MIB + 7: b"middle!", 700 * MIB - 3: b"straddles a block", GIB - BLOCK: b"t" * BLOCK}


def write_at(path: Path, writes: dict[int, bytes]) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, data in writes.items():
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


def nonzero_blocks(path: Path) -> dict[int, bytes]:
    """{block number: content} of every non-zero 4 KiB block, visiting data extents only.

    Reading a 1 GiB thin file this way costs only its written blocks, and the result does
    not depend on how the file system happens to split or merge extents.
    """
    blocks: dict[int, bytes] = {}
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for block_start in range(start - start % BLOCK, end, BLOCK):
                chunk = os.pread(fd, BLOCK, block_start)
                if chunk.strip(b"\0"):
                    blocks[block_start // BLOCK] = chunk
            offset = end
    return blocks


def used_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def reflink_supported(directory: Path) -> bool:
    """Whether FICLONE works in `directory` (btrfs, XFS with reflink; not ext4 or tmpfs)."""
    a, b = directory / "probe-a", directory / "probe-b"
    a.write_bytes(b"x" * BLOCK)
    try:
        with open(a, "rb") as fin, open(b, "wb") as fout:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        return True
    except OSError:
        return False
    finally:
        a.unlink()
        b.unlink(missing_ok=True)


@pytest.fixture
def backend(tmp_path: Path) -> FileBackend:
    return FileBackend(tmp_path / "cluster")


# -- volumes -----------------------------------------------------------------------


async def test_create_is_thin(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", GIB)
    path = backend.volume_path("vol-1")
    assert path.stat().st_size == GIB
    assert path.stat().st_blocks == 0
    assert nonzero_blocks(path) == {}
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


async def test_create_is_idempotent(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", GIB)
    write_at(backend.volume_path("vol-1"), {0: b"keep me"})
    await backend.create_volume("vol-1", GIB)  # the retry after a crash: same file, data kept
    assert read_at(backend.volume_path("vol-1"), 0, 7) == b"keep me"
    assert backend.volume_path("vol-1").stat().st_size == GIB

    with pytest.raises(FailedPrecondition):
        await backend.create_volume("vol-1", GIB // 2)  # never shrinks someone's data
    assert backend.volume_path("vol-1").stat().st_size == GIB


async def test_expand_grows_and_keeps_data(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", GIB)
    write_at(backend.volume_path("vol-1"), {123: b"data"})
    await backend.expand_volume("vol-1", 2 * GIB)
    path = backend.volume_path("vol-1")
    assert path.stat().st_size == 2 * GIB
    assert read_at(path, 123, 4) == b"data"
    assert used_bytes(path) <= 64 * 1024

    await backend.expand_volume("vol-1", 2 * GIB)  # repeated: nothing to do
    await backend.expand_volume("vol-1", GIB)  # a stale smaller request never shrinks
    assert path.stat().st_size == 2 * GIB

    with pytest.raises(NotFound):
        await backend.expand_volume("missing", GIB)


async def test_delete_is_idempotent(backend: FileBackend) -> None:
    await backend.delete_volume("never-created")  # before the folders even exist
    await backend.create_volume("vol-1", MIB)
    await backend.delete_volume("vol-1")
    assert not backend.volume_path("vol-1").exists()
    await backend.delete_volume("vol-1")
    await backend.delete_snapshot("never-created")


# -- snapshots and copies ----------------------------------------------------------


async def test_snapshot_copies_data_and_keeps_holes(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", GIB)
    vol = backend.volume_path("vol-1")
    write_at(vol, WRITES)

    await backend.create_snapshot("snap-1", "vol-1")
    snap = backend.snapshot_path("snap-1")
    assert snap.stat().st_size == GIB
    for offset, data in WRITES.items():
        assert read_at(snap, offset, len(data)) == data
    assert nonzero_blocks(snap) == nonzero_blocks(vol)
    assert used_bytes(snap) <= 256 * 1024, "the snapshot of a thin volume must stay thin"

    # Point in time: later writes to the volume do not reach the snapshot.
    write_at(vol, {0: b"HEAD"})
    assert read_at(snap, 0, 4) == b"head"

    await backend.create_snapshot("snap-1", "vol-1")  # repeated: kept as taken
    assert read_at(snap, 0, 4) == b"head"


async def test_snapshot_of_missing_volume(backend: FileBackend) -> None:
    with pytest.raises(NotFound):
        await backend.create_snapshot("snap-1", "missing")
    assert not backend.snapshot_path("snap-1").exists()


async def test_volume_from_snapshot_carries_data_and_can_be_bigger(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", GIB)
    write_at(backend.volume_path("vol-1"), WRITES)
    await backend.create_snapshot("snap-1", "vol-1")

    await backend.create_volume_from_snapshot("vol-2", "snap-1", 2 * GIB)
    restored = backend.volume_path("vol-2")
    assert restored.stat().st_size == 2 * GIB
    assert nonzero_blocks(restored) == nonzero_blocks(backend.snapshot_path("snap-1"))
    assert used_bytes(restored) <= 256 * 1024

    await backend.create_volume_from_snapshot("vol-2", "snap-1", 2 * GIB)  # repeated
    await backend.delete_snapshot("snap-1")
    # The retry of a create that already happened needs no source any more.
    await backend.create_volume_from_snapshot("vol-2", "snap-1", 2 * GIB)
    assert restored.stat().st_size == 2 * GIB

    with pytest.raises(NotFound):
        await backend.create_volume_from_snapshot("vol-3", "snap-1", GIB)


async def test_copy_smaller_than_source_is_refused(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", GIB)
    await backend.create_snapshot("snap-1", "vol-1")
    with pytest.raises(OutOfRange):
        await backend.create_volume_from_snapshot("vol-2", "snap-1", GIB // 2)
    with pytest.raises(OutOfRange):
        await backend.clone_volume("vol-3", "vol-1", GIB // 2)
    assert [i.id for i in await backend.inventory() if i.kind == "volume"] == ["vol-1"]


async def test_clone_carries_data_and_can_be_bigger(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", GIB)
    write_at(backend.volume_path("vol-1"), WRITES)
    await backend.clone_volume("vol-2", "vol-1", GIB + MIB)
    clone = backend.volume_path("vol-2")
    assert clone.stat().st_size == GIB + MIB
    assert nonzero_blocks(clone) == nonzero_blocks(backend.volume_path("vol-1"))
    assert used_bytes(clone) <= 256 * 1024

    # Independent from then on.
    write_at(clone, {0: b"CLONE"})
    assert read_at(backend.volume_path("vol-1"), 0, 5) == b"headh"

    with pytest.raises(NotFound):
        await backend.clone_volume("vol-3", "missing", GIB)


# -- crash leftovers ---------------------------------------------------------------


async def test_leftover_partial_files_are_replaced(backend: FileBackend) -> None:
    """A crash mid-create leaves `<id>.img.partial`; the retry must not build on its contents."""
    backend.volumes.mkdir(parents=True)
    backend.snapshots.mkdir(parents=True)
    garbage = b"half-written garbage" * 1000

    vol_partial = backend.volumes / "vol-1.img.partial"
    vol_partial.write_bytes(garbage)
    vol_partial.chmod(0o644)
    await backend.create_volume("vol-1", GIB)
    vol = backend.volume_path("vol-1")
    assert vol.stat().st_size == GIB
    assert vol.stat().st_blocks == 0
    assert not vol_partial.exists()

    write_at(vol, WRITES)
    snap_partial = backend.snapshots / "snap-1.img.partial"
    snap_partial.write_bytes(garbage)
    snap_partial.chmod(0o666)
    os.truncate(snap_partial, 3 * GIB)  # bigger than the real thing, too
    await backend.create_snapshot("snap-1", "vol-1")
    snap = backend.snapshot_path("snap-1")
    assert snap.stat().st_size == GIB
    assert nonzero_blocks(snap) == nonzero_blocks(vol)
    assert not snap_partial.exists()

    copy_partial = backend.volumes / "vol-2.img.partial"
    copy_partial.write_bytes(garbage)
    await backend.create_volume_from_snapshot("vol-2", "snap-1", GIB)
    assert nonzero_blocks(backend.volume_path("vol-2")) == nonzero_blocks(vol)
    assert not copy_partial.exists()

    # Tenant data: private whatever mode the leftover had.
    for path in (vol, snap, backend.volume_path("vol-2")):
        assert path.stat().st_mode & 0o777 == 0o600, path

    # Partial files are inventory marked partial (the watcher finds unfinished creates),
    # and delete clears them too.
    (backend.volumes / "vol-9.img.partial").write_bytes(garbage)
    assert [i.partial for i in await backend.inventory() if i.id == "vol-9"] == [True]
    await backend.delete_volume("vol-9")
    assert not (backend.volumes / "vol-9.img.partial").exists()


# -- ids, inventory, capacity --------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id", ["../x", "..", "a/b", "/etc/passwd", "", ".hidden", "-x", "vol\n", "a" * 129, "vol 1", "vol.img"]
)
async def test_invalid_ids_are_rejected(backend: FileBackend, tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(ValueError):
        await backend.create_volume(bad_id, MIB)
    with pytest.raises(ValueError):
        await backend.create_snapshot(bad_id, "vol-1")
    with pytest.raises(ValueError):
        await backend.delete_volume(bad_id)
    with pytest.raises(ValueError):
        await backend.clone_volume("vol-2", bad_id, MIB)
    assert os.listdir(tmp_path) == []


async def test_longest_valid_id(backend: FileBackend) -> None:
    await backend.create_volume("a" * 128, MIB)
    assert backend.volume_path("a" * 128).exists()


async def test_inventory_lists_volumes_and_snapshots_with_usage(backend: FileBackend) -> None:
    assert await backend.inventory() == []
    await backend.create_volume("vol-1", GIB)
    await backend.create_volume("vol-2", 2 * MIB)
    write_at(backend.volume_path("vol-2"), {0: b"x" * MIB})
    await backend.create_snapshot("snap-1", "vol-2")

    items = {(i.kind, i.id): i for i in await backend.inventory()}
    assert set(items) == {("volume", "vol-1"), ("volume", "vol-2"), ("snapshot", "snap-1")}
    assert items["volume", "vol-1"] == InventoryItem(
        "volume", "vol-1", GIB, 0, created_at=items["volume", "vol-1"].created_at
    )
    for key in (("volume", "vol-2"), ("snapshot", "snap-1")):
        assert items[key].size_bytes == 2 * MIB
        assert MIB <= items[key].used_bytes < 2 * MIB


async def test_capacity_is_the_file_systems(backend: FileBackend) -> None:
    cap = await backend.capacity()
    st = os.statvfs(backend.root)
    assert cap.total_bytes == st.f_blocks * st.f_frsize
    # Other processes write to this file system too: allow some drift.
    assert abs(cap.free_bytes - st.f_bavail * st.f_frsize) < 256 * MIB
    assert 0 < cap.free_bytes <= cap.total_bytes


async def test_node_context_is_the_path(backend: FileBackend) -> None:
    await backend.create_volume("vol-1", MIB)
    assert backend.node_context("vol-1") == {"path": str(backend.volume_path("vol-1").resolve())}
    with pytest.raises(ValueError):
        backend.node_context("../vol-1")


async def test_io_errors_become_backend_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cluster root should be")
    with pytest.raises(BackendError):
        await FileBackend(blocker).create_volume("vol-1", MIB)


def test_registry(tmp_path: Path) -> None:
    backend = build_backend("file", {"root": str(tmp_path), "ignored": 1})
    assert isinstance(backend, FileBackend)
    assert backend.root == tmp_path
    assert validate_backend_config("file", {"root": "/srv/berth", "x": 1}) == {"root": "/srv/berth"}
    with pytest.raises(InvalidArgument) as exc:
        validate_backend_config("file", {"root": "relative/path"})
    assert exc.value.reason == "invalid_backend_config"
    with pytest.raises(InvalidArgument) as exc:
        build_backend("ceph", {})
    assert exc.value.reason == "unknown_backend_kind"


# -- the copy itself -----------------------------------------------------------------


def test_sparse_copy_reflinks_where_the_file_system_can(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"")
    os.truncate(src, 64 * MIB)
    write_at(src, {MIB: b"data"})
    reflinked = sparse_copy(src, dst)
    assert reflinked == reflink_supported(tmp_path), "FICLONE must be used exactly when the file system offers it"
    assert dst.stat().st_size == 64 * MIB
    assert nonzero_blocks(dst) == nonzero_blocks(src)


@pytest.mark.parametrize(
    ("size", "writes"),
    [
        (0, {}),  # empty
        (8 * MIB, {}),  # all hole
        (8 * MIB, {0: b"a"}),  # data first, hole to the end
        (8 * MIB, {8 * MIB - 1: b"z"}),  # hole first, data at the very end
        (8 * MIB, {5: b"x", 3 * MIB: b"y" * (BLOCK * 3), 6 * MIB + 1: b"w"}),  # several extents
        (3 * BLOCK + 5, {0: b"q" * (3 * BLOCK + 5)}),  # all data, size not block aligned
    ],
)
def test_sparse_copy_without_reflink(tmp_path: Path, size: int, writes: dict[int, bytes]) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"")
    os.truncate(src, size)
    write_at(src, writes)
    dst.write_bytes(b"stale content that must go" * 5000)

    assert sparse_copy(src, dst, reflink=False) is False
    assert dst.stat().st_size == size
    assert dst.read_bytes() == src.read_bytes()
    assert used_bytes(dst) <= used_bytes(src) + BLOCK

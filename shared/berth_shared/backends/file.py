"""The file backend: thin volumes as sparse files on one host (the embedded default).

Layout under the cluster root: `volumes/<volume id>.img`, `snapshots/<snapshot id>.img`.
The file name is the Berth id, which is what ties a file to its provisioner record.
New files are written under a temporary name and renamed into place, so a crash leaves
either nothing or a complete file, and every call can simply be repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
from pathlib import Path

from berth_shared.backends.base import BackendError, Capacity, FenceTarget, InventoryItem, Unsupported
from berth_shared.errors import FailedPrecondition, NotFound, OutOfRange
from berth_shared.node.host import cut_off_file

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,127}")
_TMP_SUFFIX = ".partial"


def _check_id(value: str) -> str:
    # fullmatch, not match: `$` also matches before a trailing newline ("vol\n").
    if not _ID.fullmatch(value):
        raise ValueError(f"invalid backend object id {value!r}")
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_private(path: Path) -> int:
    """Open `path` empty, write-only and 0600: it holds a tenant's data.

    O_CREAT's mode does not apply to a file that already exists (a crash's leftover
    `.partial`), hence the explicit fchmod.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sparse_copy(src: Path, dst: Path, *, reflink: bool = True) -> bool:
    """Copy `src` to `dst` keeping holes; return True when it was a reflink.

    With `reflink` (the default) the file system is first asked for a copy-on-write clone
    (FICLONE: btrfs, XFS, bcachefs...); where it cannot, only the data extents are copied
    (SEEK_DATA/SEEK_HOLE + copy_file_range), so a thin file stays thin. `dst` is
    truncated first and fsync'd before returning, so the caller can rename it into place.
    """
    with open(src, "rb") as fin, os.fdopen(_open_private(dst), "wb") as fout:
        src_fd, dst_fd = fin.fileno(), fout.fileno()
        cloned = reflink and _try_reflink(src_fd, dst_fd)
        if not cloned:
            _copy_data_extents(src_fd, dst_fd)
        os.fsync(dst_fd)
    return cloned


def _try_reflink(src_fd: int, dst_fd: int) -> bool:
    """FICLONE `src_fd` into `dst_fd`; False when the file system cannot share extents."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF):
            raise
        return False
    return True


def _copy_data_extents(src_fd: int, dst_fd: int) -> None:
    size = os.fstat(src_fd).st_size
    offset = 0
    while offset < size:
        try:
            data = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        pos = data
        while pos < hole:
            copied = os.copy_file_range(src_fd, dst_fd, hole - pos, pos, pos)
            if copied == 0:
                break
            pos += copied
        offset = hole
    os.ftruncate(dst_fd, size)


class FileBackend:
    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.volumes = root / "volumes"
        self.snapshots = root / "snapshots"

    def _prepare(self) -> None:
        self.volumes.mkdir(parents=True, exist_ok=True)
        self.snapshots.mkdir(parents=True, exist_ok=True)

    def volume_path(self, volume_id: str) -> Path:
        return self.volumes / f"{_check_id(volume_id)}.img"

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.snapshots / f"{_check_id(snapshot_id)}.img"

    async def _io(self, fn: object, *args: object) -> None:
        try:
            await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise BackendError("file backend is out of space", reason="backend_full") from exc
            raise BackendError(f"file backend I/O error: {exc.strerror}") from exc

    # -- volumes ---------------------------------------------------------------

    async def create_volume(self, volume_id: str, size_bytes: int, *, tenant: str | None = None) -> None:
        await self._io(self._create_sync, self.volume_path(volume_id), size_bytes, None)

    async def create_volume_from_snapshot(
        self, volume_id: str, snapshot_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        src = self.snapshot_path(snapshot_id)
        if not src.exists() and not self.volume_path(volume_id).exists():
            raise NotFound(f"snapshot {snapshot_id} has no backing file")
        await self._io(self._create_sync, self.volume_path(volume_id), size_bytes, src)

    async def clone_volume(
        self, volume_id: str, source_volume_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        src = self.volume_path(source_volume_id)
        if not src.exists() and not self.volume_path(volume_id).exists():
            raise NotFound(f"volume {source_volume_id} has no backing file")
        await self._io(self._create_sync, self.volume_path(volume_id), size_bytes, src)

    def _create_sync(self, path: Path, size_bytes: int, source: Path | None) -> None:
        self._prepare()
        if path.exists():
            current = path.stat().st_size
            if current > size_bytes:
                raise FailedPrecondition(f"{path.name} exists with a larger size {current}")
            if current < size_bytes:
                os.truncate(path, size_bytes)
            return
        tmp = path.with_name(path.name + _TMP_SUFFIX)
        if source is not None:
            # Checked before copying: a volume bigger than asked would make the retry of
            # this very call fail with FailedPrecondition above.
            source_size = source.stat().st_size
            if source_size > size_bytes:
                raise OutOfRange(f"{path.name} cannot be {size_bytes} bytes, smaller than its source's {source_size}")
            _sparse_copy(source, tmp)
            if source_size < size_bytes:
                os.truncate(tmp, size_bytes)
        else:
            fd = _open_private(tmp)
            try:
                os.ftruncate(fd, size_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    async def delete_volume(self, volume_id: str) -> None:
        await self._io(self._unlink_sync, self.volume_path(volume_id))

    async def expand_volume(self, volume_id: str, size_bytes: int) -> None:
        await self._io(self._expand_sync, self.volume_path(volume_id), size_bytes)

    def _expand_sync(self, path: Path, size_bytes: int) -> None:
        if not path.exists():
            raise NotFound(f"volume file {path.name} does not exist")
        if path.stat().st_size < size_bytes:
            os.truncate(path, size_bytes)

    # -- snapshots -------------------------------------------------------------

    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        dst = self.snapshot_path(snapshot_id)
        src = self.volume_path(volume_id)
        if dst.exists():
            return
        if not src.exists():
            raise NotFound(f"volume {volume_id} has no backing file")
        await self._io(self._snapshot_sync, src, dst)

    def _snapshot_sync(self, src: Path, dst: Path) -> None:
        self._prepare()
        tmp = dst.with_name(dst.name + _TMP_SUFFIX)
        _sparse_copy(src, tmp)
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._io(self._unlink_sync, self.snapshot_path(snapshot_id))

    @staticmethod
    def _unlink_sync(path: Path) -> None:
        for p in (path, path.with_name(path.name + _TMP_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if path.parent.exists():
            _fsync_dir(path.parent)

    # -- accounting ------------------------------------------------------------

    async def capacity(self) -> Capacity:
        def _stat() -> Capacity:
            self._prepare()
            st = os.statvfs(self.root)
            return Capacity(total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize)

        return await asyncio.to_thread(_stat)

    async def inventory(self) -> list[InventoryItem]:
        def _scan() -> list[InventoryItem]:
            items: list[InventoryItem] = []
            for kind, folder in (("volume", self.volumes), ("snapshot", self.snapshots)):
                if not folder.exists():
                    continue
                for entry in os.scandir(folder):
                    if not entry.name.endswith(".img"):
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # deleted while we scanned
                        continue
                    items.append(
                        InventoryItem(
                            kind=kind,  # type: ignore[arg-type]
                            id=entry.name[: -len(".img")],
                            size_bytes=st.st_size,
                            used_bytes=st.st_blocks * 512,
                        )
                    )
            return items

        return await asyncio.to_thread(_scan)

    # -- node side and fencing ----------------------------------------------------

    async def set_qos(self, volume_id: str, iops: int | None, bytes_per_s: int | None) -> None:
        raise Unsupported("the file backend has no per-volume IO limits yet")

    def node_context(self, volume_id: str) -> dict[str, str]:
        return {"path": str(self.volume_path(volume_id).resolve())}

    async def fence(self, target: FenceTarget) -> list[str]:
        """The file backend is one host's storage, so the storage side can reach the node's
        use of each file directly: shut down the file systems on its loop devices (every
        later I/O fails), unmount them and detach the loops. Data already written stays."""
        cut: list[str] = []
        for volume_id in target.volume_ids:
            cut += await cut_off_file(self.volume_path(volume_id))
        return cut

    async def unfence(self, target: FenceTarget) -> list[str]:
        return []  # nothing stays blocked: the fence tore the node's access down

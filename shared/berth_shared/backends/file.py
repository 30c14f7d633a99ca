"""The file backend: thin volumes as sparse files on one host (the embedded default).

Layout under the cluster root: `volumes/<volume id>.img`, `snapshots/<snapshot id>.img`,
and the quarantine `trash/volumes/`, `trash/snapshots/` (same file system: a quarantine
is a rename, its data untouched). The file name is the Berth id, which is what ties a
file to its provisioner record. New files are written under a temporary name and renamed
into place, so a crash leaves either nothing or a complete file, and every call can
simply be repeated.

QoS: limits on the loop devices over a volume's file, through the host's cgroups
(`blkio.py`); a volume with no loop device on this host has nothing to limit yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from berth_shared.backends import blkio
from berth_shared.backends.base import (
    BackendError,
    Capacity,
    FenceTarget,
    InventoryItem,
    IoCounters,
    ObjectKind,
    QosLimits,
    QosState,
    TrashItem,
)
from berth_shared.backends.file_copy import fsync_dir, open_private, sparse_copy
from berth_shared.backends.file_groups import FileGroupSnapshots
from berth_shared.errors import FailedPrecondition, NotFound, OutOfRange
from berth_shared.node.cutoff import cut_off_file

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,127}")
_TMP_SUFFIX = ".partial"


def _check_id(value: str) -> str:
    # fullmatch, not match: `$` also matches before a trailing newline ("vol\n").
    if not _ID.fullmatch(value):
        raise ValueError(f"invalid backend object id {value!r}")
    return value


def _img_files(folder: Path) -> list[tuple[os.DirEntry[str], str, bool]]:
    """(entry, object id, partial) for each `<id>.img` and `<id>.img.partial` in `folder`."""
    if not folder.exists():
        return []
    found = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".img"):
            found.append((entry, entry.name[: -len(".img")], False))
        elif entry.name.endswith(".img" + _TMP_SUFFIX):
            found.append((entry, entry.name[: -len(".img" + _TMP_SUFFIX)], True))
    return found


class FileBackend(FileGroupSnapshots):
    kind = "file"

    def __init__(self, root: Path, *, qos_cgroup: str | None = None) -> None:
        self.root = root
        self.volumes = root / "volumes"
        self.snapshots = root / "snapshots"
        self.trash_dir = root / "trash"
        self.qos_cgroup = qos_cgroup

    async def close(self) -> None:
        """Nothing to drop: the file backend holds no connection."""

    def _prepare(self) -> None:
        self.volumes.mkdir(parents=True, exist_ok=True)
        self.snapshots.mkdir(parents=True, exist_ok=True)

    def volume_path(self, volume_id: str) -> Path:
        return self.volumes / f"{_check_id(volume_id)}.img"

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.snapshots / f"{_check_id(snapshot_id)}.img"

    def _live_path(self, kind: ObjectKind, object_id: str) -> Path:
        return self.volume_path(object_id) if kind == "volume" else self.snapshot_path(object_id)

    def trash_path(self, kind: ObjectKind, object_id: str) -> Path:
        return self.trash_dir / f"{kind}s" / f"{_check_id(object_id)}.img"

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
            sparse_copy(source, tmp)
            if source_size < size_bytes:
                os.truncate(tmp, size_bytes)
        else:
            fd = open_private(tmp)
            try:
                os.ftruncate(fd, size_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)

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
        sparse_copy(src, tmp)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._io(self._unlink_sync, self.snapshot_path(snapshot_id))

    @staticmethod
    def _unlink_sync(path: Path) -> None:
        for p in (path, path.with_name(path.name + _TMP_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if path.parent.exists():
            fsync_dir(path.parent)

    # -- accounting ------------------------------------------------------------

    async def capacity(self) -> Capacity:
        def _stat() -> Capacity:
            self._prepare()
            st = os.statvfs(self.root)
            return Capacity(total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize)

        return await asyncio.to_thread(_stat)

    async def inventory(self) -> list[InventoryItem]:
        def _scan() -> list[InventoryItem]:
            loops = blkio.loop_backing_files()
            items: list[InventoryItem] = []
            for kind, folder in (("volume", self.volumes), ("snapshot", self.snapshots)):
                for entry, object_id, partial in _img_files(folder):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # deleted while we scanned
                        continue
                    items.append(
                        InventoryItem(
                            kind=kind,  # type: ignore[arg-type]
                            id=object_id,
                            size_bytes=st.st_size,
                            used_bytes=st.st_blocks * 512,
                            # No birth time here: the last change, so a grace period only gets longer.
                            created_at=datetime.fromtimestamp(st.st_mtime, UTC),
                            users=tuple(loops.get(os.path.realpath(entry.path), ())),
                            partial=partial,
                        )
                    )
            return items

        return await asyncio.to_thread(_scan)

    # -- quarantine ------------------------------------------------------------

    async def trash(self) -> list[TrashItem]:
        def _scan() -> list[TrashItem]:
            items: list[TrashItem] = []
            kinds: tuple[ObjectKind, ...] = ("volume", "snapshot")
            for kind in kinds:
                for entry, object_id, _partial in _img_files(self.trash_dir / f"{kind}s"):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        # The rename into the trash set the inode's change time.
                        at = datetime.fromtimestamp(st.st_ctime, UTC)
                        items.append(TrashItem(kind, object_id, st.st_size, at))
            return items

        return await asyncio.to_thread(_scan)

    def _sources(self, kind: ObjectKind, object_id: str) -> list[Path]:
        live = self._live_path(kind, object_id)
        return [p for p in (live, live.with_name(live.name + _TMP_SUFFIX)) if p.exists()]

    async def quarantine(self, kind: ObjectKind, object_id: str) -> None:
        def _move() -> None:
            target = self.trash_path(kind, object_id)
            sources = self._sources(kind, object_id)
            if not sources:
                if target.exists():
                    return  # already quarantined
                raise NotFound(f"{kind} {object_id} has no file to quarantine")
            for src in sources:
                users = blkio.loop_backing_files().get(str(src.resolve()))
                if users:
                    raise FailedPrecondition(
                        f"{kind} {object_id} is in use on {', '.join(users)}; not quarantined", reason="volume_in_use"
                    )
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                raise FailedPrecondition(f"{kind} {object_id} is both live and in the trash", reason="trash_conflict")
            # The complete file wins over a leftover partial one; the partial goes too.
            os.replace(sources[0], target)
            for leftover in sources[1:]:
                leftover.unlink()
            fsync_dir(target.parent)
            fsync_dir(sources[0].parent)

        await self._io(_move)

    async def restore(self, kind: ObjectKind, object_id: str) -> None:
        def _move() -> None:
            source, live = self.trash_path(kind, object_id), self._live_path(kind, object_id)
            if not source.exists():
                if live.exists():
                    return  # already restored
                raise NotFound(f"{kind} {object_id} is not in the trash")
            if live.exists():
                raise FailedPrecondition(
                    f"{kind} {object_id} exists again: not restored over it", reason="trash_conflict"
                )
            self._prepare()
            os.replace(source, live)
            fsync_dir(live.parent)
            fsync_dir(source.parent)

        await self._io(_move)

    async def purge(self, kind: ObjectKind, object_id: str) -> None:
        await self._io(self._unlink_sync, self.trash_path(kind, object_id))

    # -- QoS and IO ------------------------------------------------------------

    async def set_qos(self, volume_id: str, limits: QosLimits) -> QosState:
        return await asyncio.to_thread(self._qos_sync, volume_id, limits)

    async def get_qos(self, volume_id: str) -> QosState:
        return await asyncio.to_thread(self._qos_sync, volume_id, None)

    def _qos_sync(self, volume_id: str, limits: QosLimits | None) -> QosState:
        """Apply (`limits`) or read (None) the limits on every loop device of the volume."""
        path = self.volume_path(volume_id)
        if not path.exists():
            raise NotFound(f"volume {volume_id} has no backing file")
        devices = blkio.loop_backing_files().get(str(path.resolve()), [])
        throttle, why = blkio.find_throttle(self.qos_cgroup)
        if throttle is None:
            return QosState(QosLimits(), False, f"not enforced: {why}")
        if not devices:
            return QosState(QosLimits(), False, "not enforced: not attached on this host (no loop device to limit)")
        try:
            if limits is not None:
                for device in devices:
                    blkio.apply(throttle, device, limits)
            held = {blkio.read(throttle, device) for device in devices}
        except OSError as exc:
            return QosState(QosLimits(), False, f"not enforced: {throttle.describe()}: {exc.strerror or exc}")
        # Two loop devices with different limits (one set by hand): report the first, not enforced.
        first = sorted(held, key=lambda q: sorted(q.as_dict().items()))[0]
        return QosState(first, len(held) == 1, f"{throttle.describe()} on {', '.join(devices)}")

    async def io_counters(self) -> dict[str, IoCounters]:
        def _scan() -> dict[str, IoCounters]:
            prefix = str(self.volumes.resolve()) + os.sep
            out: dict[str, IoCounters] = {}
            for backing, devices in blkio.loop_backing_files().items():
                if not (backing.startswith(prefix) and backing.endswith(".img")):
                    continue
                samples = [c for c in (blkio.counters(d) for d in devices) if c is not None]
                if samples:
                    out[backing[len(prefix) : -len(".img")]] = IoCounters(
                        read_ops=sum(c.read_ops for c in samples),
                        write_ops=sum(c.write_ops for c in samples),
                        read_bytes=sum(c.read_bytes for c in samples),
                        write_bytes=sum(c.write_bytes for c in samples),
                        source=",".join(devices),
                    )
            return out

        return await asyncio.to_thread(_scan)

    # -- node side and fencing ----------------------------------------------------

    def node_context(self, volume_id: str) -> dict[str, str]:
        return {"path": str(self.volume_path(volume_id).resolve())}

    async def fence(self, target: FenceTarget) -> list[str]:
        """The file backend is one host's storage, so the storage side reaches every use of
        each file on it directly, through the kernel (`berth_shared.node.cutoff`): the loop
        devices go read-only, their file systems shut down (every later I/O fails), then
        they are unmounted and detached. Data already written stays."""
        cut: list[str] = []
        for volume_id in target.volume_ids:
            cut += await asyncio.to_thread(cut_off_file, self.volume_path(volume_id))
        return cut

    async def unfence(self, target: FenceTarget) -> list[str]:
        return []  # nothing stays blocked: the fence tore the node's access down

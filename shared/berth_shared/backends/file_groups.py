"""Group snapshots on the file backend: several volumes copied at one point in time.

A mixin of `FileBackend`. The cut: every file system on the members' loop devices on this
host is frozen (`berth_shared.node.freeze`: flushed, later writes held), each member's
file is copied (reflink where the file system can, else its data extents) to
`snapshots/<member id>.img.partial`, and they are thawed, so pods' writes wait only for
the copies. Then the manifest `groups/<group id>.json` is written, the mark that the cut
is complete, and the copies are renamed into place.

Crash safety: without the manifest, a retry throws away any member copy there is and cuts
again (member copies from two cuts would not be one point in time); with it, the retry
only finishes the renames. Every attempt ends by thawing the members' file systems, and
so does the delete (the rollback of a create given up), so a crash while they were frozen
holds pods' writes only until the operation is resumed (which also thaws a freeze someone
made on them by hand).

A member in use without a file system this host can freeze (a raw block volume a pod
writes) cannot be cut consistently: the create is refused (FailedPrecondition).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from berth_shared.backends.base import BackendError
from berth_shared.backends.file_copy import fsync_dir, sparse_copy
from berth_shared.errors import FailedPrecondition, NotFound
from berth_shared.faults import checkpoint
from berth_shared.node import host
from berth_shared.node.run import HostCommandError, run

FREEZE_TIMEOUT_S = 30.0
_PARTIAL = ".partial"


class FileGroupSnapshots:
    """`FileBackend` provides the layout and the I/O wrapper declared here."""

    root: Path
    snapshots: Path
    _io: Callable[..., Awaitable[None]]

    def volume_path(self, volume_id: str) -> Path:
        raise NotImplementedError

    def snapshot_path(self, snapshot_id: str) -> Path:
        raise NotImplementedError

    def _prepare(self) -> None:
        raise NotImplementedError

    def manifest_path(self, group_snapshot_id: str) -> Path:
        # Through snapshot_path: the same check of the id as every other file name.
        return self.root / "groups" / f"{self.snapshot_path(group_snapshot_id).stem}.json"

    async def create_group_snapshot(self, group_snapshot_id: str, members: Mapping[str, str]) -> None:
        await self._io(self._group_create_sync, group_snapshot_id, dict(members))

    async def delete_group_snapshot(self, group_snapshot_id: str, members: Mapping[str, str]) -> None:
        await self._io(self._group_delete_sync, group_snapshot_id, dict(members))

    def _group_create_sync(self, group_snapshot_id: str, members: dict[str, str]) -> None:
        self._prepare()
        manifest = self.manifest_path(group_snapshot_id)
        if not manifest.exists():
            sources = {m: self.volume_path(v) for m, v in members.items()}
            missing = sorted(members[m] for m, src in sources.items() if not src.exists())
            if missing:
                raise NotFound(f"volume(s) {', '.join(missing)} have no backing file")
            for member in members:
                _unlink(self.snapshot_path(member))  # an unfinished cut's copies
            devices = sorted({d for src in sources.values() for d in host.loops_backed_by(src)})
            try:
                _freeze(devices)
                for member, src in sources.items():
                    sparse_copy(src, _partial(self.snapshot_path(member)))
            finally:
                thaw(devices)
            fsync_dir(self.snapshots)
            checkpoint("file.group_snapshot.copied")  # fault tests: copies made, the cut not marked
            manifest.parent.mkdir(parents=True, exist_ok=True)
            tmp = manifest.with_name(manifest.name + _PARTIAL)
            tmp.write_text(json.dumps({"group_snapshot_id": group_snapshot_id, "members": members}))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, manifest)
            fsync_dir(manifest.parent)
        for member in members:
            final = self.snapshot_path(member)
            if _partial(final).exists():
                os.replace(_partial(final), final)
        fsync_dir(self.snapshots)

    def _group_delete_sync(self, group_snapshot_id: str, members: dict[str, str]) -> None:
        # A create given up while frozen must not leave the members' file systems held.
        devices = sorted({d for v in members.values() for d in host.loops_backed_by(self.volume_path(v))})
        thaw(devices)
        for member in members:
            _unlink(self.snapshot_path(member))
        manifest = self.manifest_path(group_snapshot_id)
        for path in (manifest, manifest.with_name(manifest.name + _PARTIAL)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for folder in (self.snapshots, manifest.parent):
            if folder.exists():
                fsync_dir(folder)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + _PARTIAL)


def _unlink(path: Path) -> None:
    for p in (path, _partial(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _freeze(devices: list[str]) -> None:
    """Freeze the file systems on `devices` (the caller thaws them, whatever happens); one
    a dead attempt left frozen stays frozen (EBUSY), to be thawed with the others."""
    lines = _freeze_tool("freeze", devices)
    raw = [line.split()[1] for line in lines if line.startswith("raw ")]
    if raw:
        raise FailedPrecondition(
            f"{', '.join(raw)} carr{'ies' if len(raw) == 1 else 'y'} no file system this host can freeze (a raw "
            "block volume in use): its writes cannot be held for a consistent group snapshot; unpublish it, or "
            "snapshot it alone",
            reason="group_snapshot_inconsistent",
            devices=raw,
        )


def thaw(devices: list[str]) -> None:
    _freeze_tool("thaw", devices)


def _freeze_tool(action: str, devices: list[str]) -> list[str]:
    if not devices:
        return []
    try:
        done = run(sys.executable, "-m", "berth_shared.node.freeze", action, *devices, timeout=FREEZE_TIMEOUT_S)
    except HostCommandError as exc:
        raise BackendError(f"{action} of {', '.join(devices)} failed: {exc.detail}") from exc
    return done.stdout.splitlines()

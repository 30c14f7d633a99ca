"""What this node holds, in small JSON files under the state dir, so that a restarted
adapter still knows which volumes it staged where (and what a fence took away)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, Field

from berth_csi.mapping import valid_id
from berth_shared.errors import NotFound
from berth_shared.node import Staged


class VolumeState(BaseModel):
    volume_id: str
    staging_path: str
    block: bool = False
    generation: int | None = None  # the attachment generation it was staged under
    targets: dict[str, bool] = Field(default_factory=dict)  # target_path -> readonly
    # What the node side staged (berth_shared.node.staging): backend, source, device, mount,
    # the Ceph client address a fence cuts off, and all that unstaging needs (for Ceph the
    # fuse daemon's pid and dir, the cephx identity), so a restarted adapter can unstage.
    # Written first with only what is known before anything is attached: a crash mid-stage
    # leaves a record to clean up from.
    staged: Staged

    @property
    def backend(self) -> str:
        return self.staged.backend


class NodeState:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.volumes = root / "volumes"
        self.volumes.mkdir(parents=True, exist_ok=True)
        self.fenced_file = root / "fenced.json"

    def _path(self, volume_id: str) -> Path:
        if not valid_id(volume_id):  # ids become file names: keep them to the id alphabet
            raise NotFound(f"volume {volume_id!r} not found", reason="volume_not_found")
        return self.volumes / f"{volume_id}.json"

    def get(self, volume_id: str) -> VolumeState | None:
        path = self._path(volume_id)
        try:
            return VolumeState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def put(self, st: VolumeState) -> None:
        _write(self._path(st.volume_id), st.model_dump_json(indent=1).encode())

    def remove(self, volume_id: str) -> None:
        self._path(volume_id).unlink(missing_ok=True)

    def all(self) -> list[VolumeState]:
        out = []
        for p in sorted(self.volumes.glob("*.json")):
            try:
                out.append(VolumeState.model_validate_json(p.read_bytes()))
            except FileNotFoundError:  # removed since the listing (a reader beside the node service)
                continue
        return out

    # A fence takes volumes away at some attachment generation: a publish context from
    # that generation or before is stale and must never be staged again here.
    def fenced(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self.fenced_file.read_text()).items()}
        except FileNotFoundError:
            return {}

    def record_fenced(self, volume_id: str, generation: int) -> None:
        seen = self.fenced()
        seen[volume_id] = max(generation, seen.get(volume_id, 0))
        _write(self.fenced_file, json.dumps(seen).encode())


def _write(path: Path, data: bytes) -> None:
    """Atomic replace: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

"""What the watcher asks of the RBD backend: QoS as librbd image config, per-image IO
counters from the mgr, and the quarantine (the RBD trash, see `rbd.py`).

A mixin of `RbdBackend`: it uses the backend's connection, pool and image helpers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from typing import Any, TypeVar

from berth_shared.backends.base import IoCounters, ObjectKind, QosLimits, QosState, TrashItem
from berth_shared.backends.ceph_common import CephConnection, OmapIndex, check_object_id
from berth_shared.errors import FailedPrecondition, NotFound

T = TypeVar("T")

PARTIAL = ".berth-partial"
QUARANTINE_SNAP = "berth-quarantine-"  # + <snapshot id>: a quarantined snapshot's name
META_QUARANTINE = "berth.quarantine"
QUARANTINE_DEFERMENT_S = 10 * 365 * 24 * 3600  # until the watcher purges it
# QosLimits field -> librbd option (stored as image metadata `conf_<option>`).
QOS_KEYS = {
    "iops": "rbd_qos_iops_limit",
    "bps": "rbd_qos_bps_limit",
    "read_iops": "rbd_qos_read_iops_limit",
    "write_iops": "rbd_qos_write_iops_limit",
    "read_bps": "rbd_qos_read_bps_limit",
    "write_bps": "rbd_qos_write_bps_limit",
}
QOS_ENFORCED = "librbd image config (honoured by librbd clients: rbd-fuse, rbd-nbd, QEMU; not by krbd)"


def quarantine_mark(image: Any) -> dict[str, Any] | None:
    try:
        return dict(json.loads(image.metadata_get(META_QUARANTINE)))
    except (KeyError, ValueError):
        return None


class RbdWatchOps:
    """QoS, IO counters and quarantine; `RbdBackend` provides the plumbing declared here."""

    conn: CephConnection
    index: OmapIndex
    pool: str

    async def _do(self, fn: Callable[..., T], *args: Any, what: str) -> T:
        raise NotImplementedError

    def _open(
        self, ioctx: Any, name: str | None = None, *, image_id: str | None = None, read_only: bool = True
    ) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _exists(self, ioctx: Any, name: str) -> bool:
        raise NotImplementedError

    @staticmethod
    def _rbd() -> Any:
        raise NotImplementedError

    def _remove_snap_if_childless(self, image: Any, snap: str) -> bool:
        raise NotImplementedError

    @staticmethod
    def _in_use(volume_id: str, watchers: list[str]) -> FailedPrecondition:
        raise NotImplementedError

    # -- QoS ---------------------------------------------------------------------------

    async def set_qos(self, volume_id: str, limits: QosLimits) -> QosState:
        """librbd's own limits, stored as image config; a limit left out is removed."""
        check_object_id(volume_id)
        wanted = limits.as_dict()

        def run(ioctx: Any) -> QosState:
            with self._open(ioctx, volume_id, read_only=False) as image:
                for field_name, key in QOS_KEYS.items():
                    if field_name in wanted:
                        image.config_set(key, str(wanted[field_name]))
                    else:
                        with suppress(KeyError):  # no such override: already unlimited
                            image.config_remove(key)
                return self._qos_of(image)

        return await self._do(run, what=f"set qos on rbd volume {volume_id}")

    async def get_qos(self, volume_id: str) -> QosState:
        check_object_id(volume_id)

        def run(ioctx: Any) -> QosState:
            with self._open(ioctx, volume_id) as image:
                return self._qos_of(image)

        return await self._do(run, what=f"read qos of rbd volume {volume_id}")

    @staticmethod
    def _qos_of(image: Any) -> QosState:
        meta = dict(image.metadata_list())
        held = {f: int(meta["conf_" + k]) for f, k in QOS_KEYS.items() if int(meta.get("conf_" + k) or 0) > 0}
        return QosState(QosLimits(**held), True, QOS_ENFORCED)

    async def io_counters(self) -> dict[str, IoCounters]:
        """Per-image IO counted by the mgr's `rbd_support` module (OSD perf queries) since
        the first time it was asked for this pool: cumulative ops and bytes of every client.
        The mgr stops a query nobody polls for a minute, so poll more often than that."""
        out = await asyncio.to_thread(
            self.conn.mgr, {"prefix": "rbd perf image counters", "pool_spec": self.pool, "sort_by": "write_ops"}
        )
        if not isinstance(out, dict):
            return {}
        names = [str(d) for d in out.get("counter_descriptors", [])]
        found: dict[str, IoCounters] = {}
        for entry in out.get("counters", []):
            for spec, values in dict(entry).items():
                # "<pool id>/[<namespace>/]<image>"
                image = str(spec).rsplit("/", 1)[-1]
                got = dict(zip(names, (int(v) for v in values), strict=False))
                found[image] = IoCounters(
                    read_ops=got.get("read_ops", 0),
                    write_ops=got.get("write_ops", 0),
                    read_bytes=got.get("read_bytes", 0),
                    write_bytes=got.get("write_bytes", 0),
                    source=f"mgr rbd perf {self.pool}",
                )
        return found

    # -- quarantine --------------------------------------------------------------------

    async def trash(self) -> list[TrashItem]:
        def run(ioctx: Any) -> list[TrashItem]:
            rbd = self._rbd()
            items: list[TrashItem] = []
            for entry in list(rbd.RBD().trash_list(ioctx)):
                with suppress(NotFound), self._open(ioctx, image_id=str(entry["id"])) as image:
                    mark = quarantine_mark(image)
                    if mark is not None:
                        at = dt.datetime.fromisoformat(mark["at"])
                        items.append(TrashItem("volume", str(mark["volume_id"]), int(image.size()), at))
            for entry in list(rbd.RBD().list2(ioctx)):
                with suppress(NotFound), self._open(ioctx, image_id=str(entry["id"])) as image:
                    for snap in image.list_snaps():
                        name = str(snap["name"])
                        if name.startswith(QUARANTINE_SNAP):
                            at = image.get_snap_timestamp(int(snap["id"])).replace(tzinfo=dt.UTC)
                            items.append(TrashItem("snapshot", name[len(QUARANTINE_SNAP) :], int(snap["size"]), at))
            return items

        return await self._do(run, what="list the rbd quarantine")

    def _quarantined_image(self, ioctx: Any, volume_id: str) -> tuple[str, dict[str, Any]] | None:
        """(trash image id, quarantine mark) of a quarantined volume."""
        rbd = self._rbd()
        for entry in list(rbd.RBD().trash_list(ioctx)):
            if entry["name"] not in (volume_id, volume_id + PARTIAL):
                continue
            with suppress(NotFound), self._open(ioctx, image_id=str(entry["id"])) as image:
                mark = quarantine_mark(image)
                if mark is not None and mark.get("volume_id") == volume_id:
                    return str(entry["id"]), mark
        return None

    def _snapshot_image(self, ioctx: Any, snap: str) -> str | None:
        """The id of the live image holding snapshot `snap` (index first, else a scan)."""
        entry = self.index.get("snap." + snap.removeprefix(QUARANTINE_SNAP))
        candidates = [str(entry["image_id"])] if entry else []
        candidates += [str(e["id"]) for e in self._rbd().RBD().list2(ioctx)]
        for image_id in candidates:
            with suppress(NotFound), self._open(ioctx, image_id=image_id) as image:
                if image.snap_exists(snap):
                    return image_id
        return None

    async def quarantine(self, kind: ObjectKind, object_id: str) -> None:
        check_object_id(object_id)
        if kind == "snapshot":
            await self._do(self._rename_snap, object_id, True, what=f"quarantine rbd snapshot {object_id}")
            return

        def run(ioctx: Any) -> None:
            rbd = self._rbd()
            name = next((n for n in (object_id, object_id + PARTIAL) if self._exists(ioctx, n)), None)
            if name is None:
                if self._quarantined_image(ioctx, object_id) is not None:
                    return  # already quarantined
                raise NotFound(f"rbd volume {object_id} not found in pool {self.pool}")
            with self._open(ioctx, name, read_only=False) as image:
                watchers = [str(w["addr"]) for w in image.watchers_list()]
                if len(watchers) > 1:  # our own read-write open is one of them
                    raise FailedPrecondition(
                        f"rbd volume {object_id} is in use ({', '.join(watchers)}); not quarantined",
                        reason="volume_in_use",
                        watchers=watchers,
                    )
                mark = {"at": dt.datetime.now(dt.UTC).isoformat(), "name": name, "volume_id": object_id}
                image.metadata_set(META_QUARANTINE, json.dumps(mark))
            try:
                rbd.RBD().trash_move(ioctx, name, QUARANTINE_DEFERMENT_S)
            except rbd.ImageBusy as exc:
                with self._open(ioctx, name, read_only=False) as image, suppress(KeyError):
                    image.metadata_remove(META_QUARANTINE)
                raise self._in_use(object_id, []) from exc

        await self._do(run, what=f"quarantine rbd volume {object_id}")

    async def restore(self, kind: ObjectKind, object_id: str) -> None:
        check_object_id(object_id)
        if kind == "snapshot":
            await self._do(self._rename_snap, object_id, False, what=f"restore rbd snapshot {object_id}")
            return

        def run(ioctx: Any) -> None:
            rbd = self._rbd()
            found = self._quarantined_image(ioctx, object_id)
            live = self._exists(ioctx, object_id) or self._exists(ioctx, object_id + PARTIAL)
            if found is None:
                if live:
                    return  # already restored
                raise NotFound(f"rbd volume {object_id} is not in the quarantine")
            if live:
                raise FailedPrecondition(
                    f"rbd volume {object_id} exists again: not restored over it", reason="trash_conflict"
                )
            image_id, mark = found
            rbd.RBD().trash_restore(ioctx, image_id, str(mark["name"]))
            with self._open(ioctx, image_id=image_id, read_only=False) as image, suppress(KeyError):
                image.metadata_remove(META_QUARANTINE)

        await self._do(run, what=f"restore rbd volume {object_id}")

    async def purge(self, kind: ObjectKind, object_id: str) -> None:
        check_object_id(object_id)

        def run(ioctx: Any) -> None:
            rbd = self._rbd()
            if kind == "snapshot":
                snap = QUARANTINE_SNAP + object_id
                image_id = self._snapshot_image(ioctx, snap)
                if image_id is None:
                    return
                with self._open(ioctx, image_id=image_id, read_only=False) as image:
                    if not self._remove_snap_if_childless(image, snap):
                        raise FailedPrecondition(f"rbd snapshot {object_id} has clones; not purged")
                return
            found = self._quarantined_image(ioctx, object_id)
            if found is None:
                return
            try:
                rbd.RBD().trash_remove(ioctx, found[0], force=True)
            except rbd.ImageHasSnapshots as exc:
                raise FailedPrecondition(
                    f"quarantined rbd volume {object_id} still has snapshots; purge them first", reason="has_snapshots"
                ) from exc
            except rbd.ImageNotFound:
                return

        await self._do(run, what=f"purge rbd {kind} {object_id}")

    def _rename_snap(self, ioctx: Any, snapshot_id: str, into_quarantine: bool) -> None:
        hidden = QUARANTINE_SNAP + snapshot_id
        src, dst = (snapshot_id, hidden) if into_quarantine else (hidden, snapshot_id)
        image_id = self._snapshot_image(ioctx, src)
        if image_id is None:
            if self._snapshot_image(ioctx, dst) is not None:
                return  # already done
            raise NotFound(f"rbd snapshot {snapshot_id} not found")
        with self._open(ioctx, image_id=image_id, read_only=False) as image:
            if image.snap_exists(dst):
                raise FailedPrecondition(
                    f"rbd snapshot {snapshot_id} is both live and quarantined", reason="trash_conflict"
                )
            image.rename_snap(src, dst)

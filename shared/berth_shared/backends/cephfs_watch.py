"""What the watcher asks of the CephFS backend: the quarantine, and honest answers about
QoS (CephFS has no per-subvolume IO limits) and IO counters (none per subvolume).

CephFS has no trash for subvolumes, so a quarantine keeps the data where it is and cuts
access: the subvolume's cephx authorisations are recorded in the config-key index
(`quarantine/<id>`) and revoked; the inventory no longer lists it. A restore grants them
again; a purge removes the subvolume. A mixin of `CephFsBackend`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from berth_shared.backends.base import IoCounters, ObjectKind, QosLimits, QosState, TrashItem, Unsupported
from berth_shared.backends.ceph_common import CephConnection, ConfigKeyIndex, check_object_id
from berth_shared.errors import FailedPrecondition, NotFound

T = TypeVar("T")
QUARANTINE = "quarantine/"
NO_QOS = "not enforced: CephFS has no per-subvolume IO limits"


def parse_time(value: Any) -> dt.datetime | None:
    """The volumes module's `YYYY-MM-DD HH:MM:SS` (UTC) timestamps."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


class CephFsWatchOps:
    """`CephFsBackend` provides the plumbing declared here."""

    conn: CephConnection
    index: ConfigKeyIndex

    async def _do(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    def _mgr(self, prefix: str, *, ok: Sequence[int] = (), **args: Any) -> Any:
        raise NotImplementedError

    def _locate(self, volume_id: str) -> tuple[str, dict[str, Any]] | None:
        raise NotImplementedError

    def _clients(self) -> list[Any]:
        raise NotImplementedError

    async def set_qos(self, volume_id: str, limits: QosLimits) -> QosState:
        check_object_id(volume_id)
        return QosState(QosLimits(), False, NO_QOS)

    async def get_qos(self, volume_id: str) -> QosState:
        check_object_id(volume_id)
        return QosState(QosLimits(), False, NO_QOS)

    async def io_counters(self) -> dict[str, IoCounters]:
        return {}

    async def trash(self) -> list[TrashItem]:
        entries = await asyncio.to_thread(self.index.keys, QUARANTINE)
        return [
            TrashItem("volume", vid, int(e.get("size_bytes", 0)), parse_time(e.get("at"))) for vid, e in entries.items()
        ]

    @staticmethod
    def _volumes_only(kind: ObjectKind) -> None:
        if kind != "volume":
            raise Unsupported("CephFS snapshots cannot be quarantined; delete them through the provisioner")

    async def quarantine(self, kind: ObjectKind, object_id: str) -> None:
        self._volumes_only(kind)
        check_object_id(object_id)

        def run() -> None:
            entry = self.index.get(QUARANTINE + object_id)
            found = self._locate(object_id)
            if found is None or found[1].get("state") == "snapshot-retained":
                if entry is not None:
                    return
                raise NotFound(f"cephfs volume {object_id} not found")
            group, info = found
            path = str(info.get("path", "/-"))
            users = [c for c in self._clients() if c.root.startswith(path)]
            if users:
                raise FailedPrecondition(
                    f"cephfs volume {object_id} is mounted by {', '.join(c.address for c in users)}; not quarantined",
                    reason="volume_in_use",
                )
            listed = self._mgr("fs subvolume authorized_list", sub_name=object_id, group_name=group) or []
            auth = {str(k): str(v) for item in listed for k, v in dict(item).items()}
            if entry is None:  # recorded before revoking: a restore must know every grant
                quota = info.get("bytes_quota")
                entry = {
                    "group": group,
                    "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                    "auth": auth,
                    "size_bytes": int(quota) if isinstance(quota, int) else 0,
                }
            else:
                entry["auth"] = {**entry.get("auth", {}), **auth}
            self.index.set(QUARANTINE + object_id, entry)
            for auth_id in auth:
                self._mgr("fs subvolume deauthorize", sub_name=object_id, group_name=group, auth_id=auth_id)

        await self._do(run)

    async def restore(self, kind: ObjectKind, object_id: str) -> None:
        self._volumes_only(kind)
        check_object_id(object_id)

        def run() -> None:
            entry = self.index.get(QUARANTINE + object_id)
            if entry is None:
                if self._locate(object_id) is not None:
                    return
                raise NotFound(f"cephfs volume {object_id} is not in the quarantine")
            group = str(entry["group"])
            for auth_id, level in dict(entry.get("auth", {})).items():
                self._mgr(
                    "fs subvolume authorize", sub_name=object_id, group_name=group, auth_id=auth_id, access_level=level
                )
            self.index.remove(QUARANTINE + object_id)

        await self._do(run)

    async def purge(self, kind: ObjectKind, object_id: str) -> None:
        self._volumes_only(kind)
        check_object_id(object_id)

        def run() -> None:
            entry = self.index.get(QUARANTINE + object_id)
            if entry is None:
                return
            group = str(entry["group"])
            snaps = self._mgr("fs subvolume snapshot ls", sub_name=object_id, group_name=group, ok=(2,)) or []
            self._mgr(
                "fs subvolume rm",
                sub_name=object_id,
                group_name=group,
                force=True,
                retain_snapshots=bool(snaps),
                ok=(2,),
            )
            self.index.remove(QUARANTINE + object_id)

        await self._do(run)

"""What the watcher asks of the Cinder and Manila backends: the quarantine, QoS and IO
counters. Mixins of `CinderBackend` and `ManilaBackend`.

Neither Cinder nor Manila has a trash Berth can use, so a quarantine keeps the object
where it is, marks it with the metadata `berth_quarantined_at` (the inventory then leaves
it out, `trash` lists it) and cuts access: an attached Cinder volume is refused (409
volume_in_use; nothing is detached behind a node's back), and a quarantined one refuses
new attachments; a Manila share's access rules are recorded in its metadata and denied, a
restore grants them again. A purge deletes the object for good (a volume's snapshots
first).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from berth_shared.backends.base import IoCounters, ObjectKind, QosLimits, QosState, TrashItem, Unsupported
from berth_shared.backends.openstack_common import GIB, META_SNAPSHOT, META_VOLUME, Cloud
from berth_shared.errors import FailedPrecondition, NotFound

META_QUARANTINE = "berth_quarantined_at"
META_QUARANTINE_ACCESS = "berth_quarantined_access"  # Manila: "<cephx id>:<level>,..."
NO_QOS = "not enforced: {why}"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def quarantined(obj: Any) -> bool:
    return bool((obj.metadata or {}).get(META_QUARANTINE))


class CinderWatchOps:
    """`CinderBackend` provides what is declared here."""

    cloud: Cloud

    @staticmethod
    def _find_volume(conn: Any, volume_id: str) -> Any:
        raise NotImplementedError

    @staticmethod
    def _find_snapshot(conn: Any, snapshot_id: str) -> Any:
        raise NotImplementedError

    def _ceph(self) -> Any:
        raise NotImplementedError

    async def image_name(self, volume_id: str) -> str:
        raise NotImplementedError

    async def _delete(self, cinder_id: str, what: str) -> None:
        raise NotImplementedError

    async def delete_snapshot(self, snapshot_id: str) -> None:
        raise NotImplementedError

    def _has_ceph(self) -> bool:
        raise NotImplementedError

    # -- QoS and IO ----------------------------------------------------------------------

    async def set_qos(self, volume_id: str, limits: QosLimits) -> QosState:
        """Per volume, on the RBD image: librbd enforces it on the node's rbd-fuse. (The
        type-wide Cinder QoS spec, scaled per GiB, is `set_type_qos`.)"""
        if not self._has_ceph():
            return QosState(QosLimits(), False, NO_QOS.format(why="no 'ceph' config for this Cinder type"))
        state: QosState = await self._ceph().set_qos(await self.image_name(volume_id), limits)
        return state

    async def get_qos(self, volume_id: str) -> QosState:
        if not self._has_ceph():
            return QosState(QosLimits(), False, NO_QOS.format(why="no 'ceph' config for this Cinder type"))
        state: QosState = await self._ceph().get_qos(await self.image_name(volume_id))
        return state

    async def io_counters(self) -> dict[str, IoCounters]:
        """The RBD images' counters, by Berth volume id."""
        if not self._has_ceph():
            return {}
        by_image: dict[str, IoCounters] = await self._ceph().io_counters()
        if not by_image:
            return {}
        ids = await self.cloud.call(
            "volume ids",
            lambda c: {
                f"volume-{v.id}": (v.metadata or {}).get(META_VOLUME)
                for v in c.block_storage.volumes(details=True)
                if (v.metadata or {}).get(META_VOLUME)
            },
        )
        return {str(ids[name]): io for name, io in by_image.items() if name in ids}

    # -- quarantine ----------------------------------------------------------------------

    def _object(self, c: Any, kind: ObjectKind, object_id: str) -> Any:
        return self._find_volume(c, object_id) if kind == "volume" else self._find_snapshot(c, object_id)

    async def trash(self) -> list[TrashItem]:
        def run(c: Any) -> list[TrashItem]:
            items: list[TrashItem] = []
            for v in c.block_storage.volumes(details=True):
                meta = v.metadata or {}
                if meta.get(META_VOLUME) and quarantined(v):
                    items.append(
                        TrashItem("volume", meta[META_VOLUME], int(v.size) * GIB, parse_time(meta[META_QUARANTINE]))
                    )
            for s in c.block_storage.snapshots(details=True):
                meta = s.metadata or {}
                if meta.get(META_SNAPSHOT) and quarantined(s):
                    items.append(
                        TrashItem("snapshot", meta[META_SNAPSHOT], int(s.size) * GIB, parse_time(meta[META_QUARANTINE]))
                    )
            return items

        return await self.cloud.call("cinder quarantine", run)

    async def quarantine(self, kind: ObjectKind, object_id: str) -> None:
        def run(c: Any) -> None:
            obj = self._object(c, kind, object_id)
            if obj is None:
                raise NotFound(f"cinder {kind} {object_id} not found")
            if quarantined(obj):
                return
            if kind == "volume" and (obj.status == "in-use" or obj.attachments):
                raise FailedPrecondition(
                    f"cinder volume {object_id} is attached; not quarantined", reason="volume_in_use"
                )
            setter = c.block_storage.set_volume_metadata if kind == "volume" else c.block_storage.set_snapshot_metadata
            setter(obj, **{META_QUARANTINE: now_iso()})

        await self.cloud.call(f"quarantine {kind} {object_id}", run)

    async def restore(self, kind: ObjectKind, object_id: str) -> None:
        def run(c: Any) -> None:
            obj = self._object(c, kind, object_id)
            if obj is None:
                raise NotFound(f"cinder {kind} {object_id} is not in the quarantine")
            if quarantined(obj):
                bs = c.block_storage
                (bs.delete_volume_metadata if kind == "volume" else bs.delete_snapshot_metadata)(
                    obj, keys=[META_QUARANTINE]
                )

        await self.cloud.call(f"restore {kind} {object_id}", run)

    async def purge(self, kind: ObjectKind, object_id: str) -> None:
        obj = await self.cloud.call("find", lambda c: self._object(c, kind, object_id))
        if obj is None or not quarantined(obj):
            return  # gone already, or not quarantined (a purge never takes a live object)
        if kind == "snapshot":
            await self.delete_snapshot(object_id)
            return
        snaps = await self.cloud.call(
            "snapshots", lambda c: list(c.block_storage.snapshots(details=True, volume_id=obj.id))
        )
        for s in snaps:
            sid = (s.metadata or {}).get(META_SNAPSHOT)
            if sid:
                await self.delete_snapshot(sid)
            else:

                def delete(c: Any, x: Any = s) -> None:
                    c.block_storage.delete_snapshot(x, ignore_missing=True)

                await self.cloud.call("delete snapshot", delete)
        await self._delete(obj.id, f"purge cinder volume {object_id}")


class ManilaWatchOps:
    """`ManilaBackend` provides what is declared here."""

    cloud: Cloud

    @staticmethod
    def _find_share(c: Any, volume_id: str) -> Any:
        raise NotImplementedError

    async def _delete(self, share_id: str, what: str) -> None:
        raise NotImplementedError

    async def _wait_snapshot(self, what: str, snap_id: str, done: Any) -> Any:
        raise NotImplementedError

    async def authorize(self, volume_id: str, cephx_id: str, *, readonly: bool = False) -> str:
        raise NotImplementedError

    async def deauthorize(self, volume_id: str, cephx_id: str) -> None:
        raise NotImplementedError

    async def set_qos(self, volume_id: str, limits: QosLimits) -> QosState:
        return QosState(QosLimits(), False, NO_QOS.format(why="CephFS shares have no IO limits"))

    async def get_qos(self, volume_id: str) -> QosState:
        return await self.set_qos(volume_id, QosLimits())

    async def io_counters(self) -> dict[str, IoCounters]:
        return {}

    @staticmethod
    def _volumes_only(kind: ObjectKind) -> None:
        if kind != "volume":
            raise Unsupported("Manila snapshots cannot be quarantined; delete them through the provisioner")

    def _share_of(self, c: Any, volume_id: str) -> Any:
        """The share with its metadata (the list view has none)."""
        share = self._find_share(c, volume_id)
        return None if share is None else c.shared_file_system.get_share(share.id)

    async def trash(self) -> list[TrashItem]:
        def run(c: Any) -> list[TrashItem]:
            items = []
            for s in c.shared_file_system.shares(details=True):
                meta = s.metadata or {}
                if meta.get(META_VOLUME) and quarantined(s):
                    items.append(
                        TrashItem("volume", meta[META_VOLUME], int(s.size) * GIB, parse_time(meta[META_QUARANTINE]))
                    )
            return items

        return await self.cloud.call("manila quarantine", run)

    async def quarantine(self, kind: ObjectKind, object_id: str) -> None:
        self._volumes_only(kind)

        def mark(c: Any) -> list[tuple[str, str]]:
            share = self._share_of(c, object_id)
            if share is None:
                raise NotFound(f"manila share {object_id} not found")
            rules = [(str(r.access_to), str(r.access_level)) for r in c.shared_file_system.access_rules(share)]
            meta = share.metadata or {}
            recorded = [tuple(x.split(":", 1)) for x in str(meta.get(META_QUARANTINE_ACCESS, "")).split(",") if x]
            every = sorted(set(rules) | {(a, b) for a, b in recorded})
            # Recorded before revoking: a restore must know every grant.
            c.shared_file_system.update_share_metadata(
                share.id,
                {
                    META_QUARANTINE: meta.get(META_QUARANTINE) or now_iso(),
                    META_QUARANTINE_ACCESS: ",".join(f"{a}:{b}" for a, b in every) or "-",
                },
            )
            return rules

        for cephx_id, _ in await self.cloud.call(f"quarantine share {object_id}", mark):
            await self.deauthorize(object_id, cephx_id)

    async def restore(self, kind: ObjectKind, object_id: str) -> None:
        self._volumes_only(kind)
        share = await self.cloud.call("find", lambda c: self._share_of(c, object_id))
        if share is None:
            raise NotFound(f"manila share {object_id} is not in the quarantine")
        meta = share.metadata or {}
        if not quarantined(share):
            return
        for item in str(meta.get(META_QUARANTINE_ACCESS, "")).split(","):
            if ":" in item:
                cephx_id, level = item.split(":", 1)
                await self.authorize(object_id, cephx_id, readonly=level == "ro")
        await self.cloud.call(
            "restore",
            lambda c: c.shared_file_system.delete_share_metadata(share.id, [META_QUARANTINE, META_QUARANTINE_ACCESS]),
        )

    async def purge(self, kind: ObjectKind, object_id: str) -> None:
        self._volumes_only(kind)
        share = await self.cloud.call("find", lambda c: self._share_of(c, object_id))
        if share is None or not quarantined(share):
            return
        snaps = await self.cloud.call(
            "snapshots", lambda c: list(c.shared_file_system.share_snapshots(details=True, share_id=share.id))
        )
        for snap in snaps:

            def delete(c: Any, x: Any = snap) -> None:
                c.shared_file_system.delete_share_snapshot(x.id, ignore_missing=True)

            await self.cloud.call("delete snapshot", delete)
            await self._wait_snapshot("purge snapshot", snap.id, lambda x: x is None)
        await self._delete(share.id, f"purge manila share {object_id}")

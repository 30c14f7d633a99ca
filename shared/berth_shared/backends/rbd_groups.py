"""Group snapshots on RBD: librbd's own group snapshots (`rbd.Group`), one point in time
across images, taken with their clients' I/O quiesced (librbd flushes and holds writes of
every member's exclusive-lock owner while the snapshots are cut).

A mixin of `RbdBackend`. Per Berth group snapshot: an RBD group named by its id holds one
group snapshot of the same name; each member image then carries a snapshot in the group
namespace, which is the member snapshot. An image belongs to one RBD group at a time, so
the members join the group only for the cut and leave it right after (their group
snapshots stay), leaving them free for the next group snapshot.

The index (`berth.index`) keeps `gsnap.<id>` (the members: snapshot id -> volume and image
id) and, per member, `snap.<member id>` with `group`, written before anything is made, so
a crash leaves everything findable and the retry (or the delete) completes it.

This Ceph (Pacific) clones only from user snapshots, so a volume restored from a member
is a full copy of the member's data (`restore_member`), flattened from the start: the
member stays free to be deleted with its group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

from berth_shared.backends.base import BackendError
from berth_shared.backends.ceph_common import OmapIndex, check_object_id
from berth_shared.errors import NotFound

if TYPE_CHECKING:
    from berth_shared.backends.rbd import RbdConfig

T = TypeVar("T")
GROUP_NAMESPACE = 1  # RBD_SNAP_NAMESPACE_TYPE_GROUP


class RbdGroupOps:
    """`RbdBackend` provides the plumbing declared here."""

    cfg: RbdConfig
    index: OmapIndex

    async def _do(self, fn: Callable[..., T], *args: Any, what: str) -> T:
        raise NotImplementedError

    def _open(
        self, ioctx: Any, name: str | None = None, *, image_id: str | None = None, read_only: bool = True
    ) -> AbstractContextManager[Any]:
        raise NotImplementedError

    @staticmethod
    def _rbd() -> Any:
        raise NotImplementedError

    def _features(self) -> int:
        raise NotImplementedError

    def _purge_one(self, ioctx: Any, image_id: str) -> bool:
        raise NotImplementedError

    # -- create and delete --------------------------------------------------------------

    async def create_group_snapshot(self, group_snapshot_id: str, members: Mapping[str, str]) -> None:
        check_object_id(group_snapshot_id)
        for member, volume in members.items():
            check_object_id(member)
            check_object_id(volume)
        await self._do(self._group_create, group_snapshot_id, dict(members), what=f"group snapshot {group_snapshot_id}")

    def _group_create(self, ioctx: Any, gsid: str, members: dict[str, str]) -> None:
        rbd = self._rbd()
        images = {}
        for member, volume in members.items():
            with self._open(ioctx, volume) as image:
                images[member] = str(image.id())
        # Index first: a crash from here on leaves a group snapshot the delete can find.
        record = {m: {"volume_id": members[m], "image_id": images[m]} for m in members}
        self.index.set("gsnap." + gsid, {"members": record})
        for member, entry in record.items():
            self.index.set("snap." + member, entry | {"group": gsid})
        with suppress(rbd.ObjectExists):
            rbd.RBD().group_create(ioctx, gsid)
        group = rbd.Group(ioctx, gsid)
        state = {str(s["name"]): int(s["state"]) for s in group.list_snaps()}
        try:
            if state.get(gsid) != rbd.RBD_GROUP_SNAP_STATE_COMPLETE:
                if gsid in state:  # an incomplete cut from an attempt that died in it
                    group.remove_snap(gsid)
                for volume in members.values():
                    self._join(ioctx, group, gsid, volume)
                group.create_snap(gsid)
        finally:
            # Cut or not, the images leave (a no-op for those not in it): one that waits
            # for a retry must not hold the others out of another group snapshot meanwhile.
            for volume in members.values():
                if self._group_of(ioctx, volume) == gsid:
                    group.remove_image(ioctx, volume)

    def _group_of(self, ioctx: Any, volume: str) -> str:
        with self._open(ioctx, volume) as image:
            return str(image.group()["name"])

    def _join(self, ioctx: Any, group: Any, gsid: str, volume: str) -> None:
        rbd = self._rbd()
        current = self._group_of(ioctx, volume)
        if current == gsid:
            return
        if current:
            # Another group snapshot's cut holds it for a moment (or someone's own RBD
            # group, for good): retried with back-off, then given up saying so.
            raise BackendError(
                f"rbd image {volume} is in rbd group {current!r}: an image joins one group at a time",
                reason="rbd_group_busy",
            )
        with suppress(rbd.ObjectExists):
            group.add_image(ioctx, volume)

    async def delete_group_snapshot(self, group_snapshot_id: str, members: Mapping[str, str]) -> None:
        check_object_id(group_snapshot_id)
        await self._do(
            self._group_delete, group_snapshot_id, dict(members), what=f"delete group snapshot {group_snapshot_id}"
        )

    def _group_delete(self, ioctx: Any, gsid: str, members: dict[str, str]) -> None:
        rbd = self._rbd()
        record = (self.index.get("gsnap." + gsid) or {}).get("members", {})
        for member in set(members) | set(record):
            image_id = record.get(member, {}).get("image_id")
            if image_id:
                self._remove_member_snap(ioctx, str(image_id), gsid)
        group = rbd.Group(ioctx, gsid)
        for volume in members.values():
            with suppress(NotFound):
                if self._group_of(ioctx, volume) == gsid:
                    group.remove_image(ioctx, volume)
        with suppress(rbd.ObjectNotFound):
            group.remove_snap(gsid)
        rbd.RBD().group_remove(ioctx, gsid)  # idempotent in librbd
        for member in set(members) | set(record):
            self.index.remove("snap." + member)
        self.index.remove("gsnap." + gsid)
        for entry in record.values():  # a deleted volume's image may wait in the trash for these
            self._purge_one(ioctx, str(entry["image_id"]))

    def _remove_member_snap(self, ioctx: Any, image_id: str, gsid: str) -> None:
        with suppress(NotFound), self._open(ioctx, image_id=image_id, read_only=False) as image:
            snap = _member_snap(image, gsid)
            if snap is not None:
                image.remove_snap_by_id(snap)

    # -- what other calls need ----------------------------------------------------------

    def restore_member(self, ioctx: Any, entry: dict[str, Any], target: str) -> None:
        """Copy a member snapshot's data into the new image `target` (see the module doc)."""
        rbd = self._rbd()
        image = rbd.Image(ioctx, image_id=str(entry["image_id"]), read_only=True)
        try:
            snap = _member_snap(image, str(entry["group"]))
            if snap is None:
                raise NotFound(f"group snapshot {entry['group']} has no snapshot of volume {entry['volume_id']}")
            image.set_snap_by_id(snap)
            image.copy(ioctx, target, features=self._features(), data_pool=self.cfg.data_pool)
        finally:
            image.close()

    def member_id(self, volume_id: str, snap: dict[str, Any]) -> str | None:
        """The member snapshot id of an image snapshot in the group namespace (None: not a
        Berth group snapshot's)."""
        group = snap.get("group") or {}
        gsid = str(group.get("snap_name", ""))
        if group.get("name") != gsid or not gsid:
            return None
        record = (self.index.get("gsnap." + gsid) or {}).get("members", {})
        return next((m for m, e in record.items() if e.get("volume_id") == volume_id), None)


def _member_snap(image: Any, gsid: str) -> int | None:
    """The id of the image's snapshot from group snapshot `gsid`."""
    for snap in image.list_snaps():
        group = snap.get("group") or {}
        if snap.get("namespace") == GROUP_NAMESPACE and group.get("name") == gsid and group.get("snap_name") == gsid:
            return int(snap["id"])
    return None

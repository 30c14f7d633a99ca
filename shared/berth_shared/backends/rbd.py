"""The RBD backend: block volumes as RBD images, through librados/librbd (never the CLI).

Naming and records:
- a volume is the image named by its Berth id, carrying metadata `berth.volume_id`;
  it is created (or cloned) under `<id>.berth-partial`, tagged, then renamed into place,
  so a crash leaves either a complete tagged image or a partial one that the retry (or
  the watcher's delete) removes: never an untagged image in the pool;
- a snapshot is an RBD snapshot named by its Berth id on the volume's image, protected so
  that clone-v1 clients can clone it; the omap index `berth.index` maps the snapshot id to
  the image id (stable across trash moves), because the interface names snapshots alone;
- `berth.node.<node id>.addr` on an image is the client address a node uses for it
  (written by the node after attach): what `fence` blocklists.

Deleting an image that still has snapshots moves it to the RBD trash (the snapshots and
clones of them live on); it is purged when its last snapshot goes.

The watcher's quarantine also uses the trash: a quarantined image carries metadata
`berth.quarantine` (when, under which name) and a long deferment, so neither
`purge_trash` nor an `rbd trash purge` removes it before the watcher purges it. A
quarantined snapshot is renamed `berth-quarantine-<id>` on its image.

Production cluster (config: conf or mon_host, keyring, user, pool, optional data_pool):
    ceph auth get-or-create client.berth \
        mon 'profile rbd, allow command "osd blocklist", allow command "osd dump", allow command "df"' \
        osd 'profile rbd pool=<pool>, profile rbd pool=<data pool>' mgr 'profile rbd pool=<pool>'
`profile rbd` alone may add blocklist entries but not remove them (unfence). An EC data
pool needs `ceph osd pool set <data pool> allow_ec_overwrites true`. Without OSD caps for
`tell osd.N status`, a fence does not wait for every OSD to hold the blocklist epoch and
relies on the next owner's first op carrying it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

from berth_shared.backends import ceph_bindings
from berth_shared.backends.base import Capacity, FenceTarget, InventoryItem
from berth_shared.backends.ceph_common import (
    Blocklist,
    CephConfig,
    CephConnection,
    OmapIndex,
    addr_matches,
    normalize_addr,
    opt_int,
    parse_common,
    pool_name,
)
from berth_shared.backends.rbd_groups import GROUP_NAMESPACE, RbdGroupOps
from berth_shared.backends.rbd_watch import PARTIAL as PARTIAL
from berth_shared.backends.rbd_watch import QOS_KEYS, QUARANTINE_SNAP, RbdWatchOps, quarantine_mark
from berth_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from berth_shared.faults import checkpoint

T = TypeVar("T")
log = logging.getLogger(__name__)

META_VOLUME = "berth.volume_id"
META_NODE = "berth.node."  # + <node id> + ".addr"
CLONE_SNAP = "berth-clone-"  # + <new volume id>: the hidden snapshot a volume clone hangs from
FEATURES = ("layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,252}$")


def _check_id(value: str) -> str:
    if not _ID.match(value):
        raise InvalidArgument(f"invalid backend object id {value!r}", reason="invalid_id")
    return value


def _check_node(value: str) -> str:
    if not _NODE.match(value):
        raise InvalidArgument(f"invalid node id {value!r}", reason="invalid_id")
    return value


@dataclass(frozen=True)
class RbdConfig:
    ceph: CephConfig
    pool: str
    data_pool: str | None
    trash_grace_s: int
    max_clone_depth: int


def validate_rbd_config(config: dict[str, Any]) -> tuple[RbdConfig, dict[str, Any]]:
    ceph, norm = parse_common("rbd", config)
    pool = pool_name("rbd", config, "pool", required=True)
    assert pool is not None
    data_pool = pool_name("rbd", config, "data_pool", required=False)
    grace = opt_int("rbd", config, "trash_grace_s", 0, 0, 365 * 24 * 3600)
    depth = opt_int("rbd", config, "max_clone_depth", 8, 1, 64)
    norm.update(pool=pool, trash_grace_s=grace, max_clone_depth=depth)
    if data_pool:
        norm["data_pool"] = data_pool
    return RbdConfig(ceph, pool, data_pool, grace, depth), norm


@dataclass(frozen=True)
class RbdVolumeInfo:
    """What `describe_volume` tells beyond the inventory: who uses the image."""

    volume_id: str
    image_id: str
    size_bytes: int
    watchers: list[str]
    lock_owners: list[str]
    node_addresses: dict[str, str]
    qos: dict[str, int]
    parent: str | None
    features: list[str] = field(default_factory=list)


class RbdBackend(RbdWatchOps, RbdGroupOps):
    kind = "rbd"

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg, self.config = validate_rbd_config(config)
        self.pool = self.cfg.pool
        self.conn = CephConnection(self.cfg.ceph)
        self.index = OmapIndex(self.conn, self.cfg.pool)
        self.blocklist = Blocklist(self.conn)

    async def close(self) -> None:
        await asyncio.to_thread(self.conn.close)

    # -- plumbing ----------------------------------------------------------------------

    async def _do(self, fn: Callable[..., T], *args: Any, what: str) -> T:
        return await asyncio.to_thread(self._sync, fn, what, *args)

    def _sync(self, fn: Callable[..., T], what: str, *args: Any) -> T:
        return self.conn.run(lambda client: self._with_ioctx(client, fn, *args), what)

    def _with_ioctx(self, client: Any, fn: Callable[..., T], *args: Any) -> T:
        with client.open_ioctx(self.cfg.pool) as ioctx:
            return fn(ioctx, *args)

    @staticmethod
    def _rbd() -> Any:
        return ceph_bindings.rbd()

    def _features(self) -> int:
        rbd = self._rbd()
        return int(rbd.RBD().features_from_string(",".join(FEATURES)))

    @contextmanager
    def _open(
        self, ioctx: Any, name: str | None = None, *, image_id: str | None = None, read_only: bool = True
    ) -> Iterator[Any]:
        """Open an image; read-only opens register no watch (they must not look like a user)."""
        rbd = self._rbd()
        try:
            image = rbd.Image(ioctx, name, image_id=image_id, read_only=read_only)
        except rbd.ImageNotFound as exc:
            raise NotFound(f"rbd image {name or image_id} not found in pool {self.cfg.pool}") from exc
        try:
            yield image
        finally:
            image.close()

    def _exists(self, ioctx: Any, name: str) -> bool:
        try:
            with self._open(ioctx, name):
                return True
        except NotFound:
            return False

    # -- volumes -----------------------------------------------------------------------

    async def create_volume(self, volume_id: str, size_bytes: int, *, tenant: str | None = None) -> None:
        _check_id(volume_id)
        await self._do(self._create_sync, volume_id, size_bytes, None, what=f"create rbd volume {volume_id}")

    async def create_volume_from_snapshot(
        self, volume_id: str, snapshot_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        _check_id(volume_id)
        _check_id(snapshot_id)

        def run(ioctx: Any) -> None:
            if self._exists(ioctx, volume_id):
                self._adopt(ioctx, volume_id, size_bytes)
                return
            entry = self.index.get("snap." + snapshot_id)
            if entry is None:
                raise NotFound(f"snapshot {snapshot_id} not found in pool {self.cfg.pool}")
            # A group snapshot's member: copied (see rbd_groups.py); any other: cloned.
            source = entry if entry.get("group") else (str(entry["image_id"]), snapshot_id)
            self._create_sync(ioctx, volume_id, size_bytes, source)

        await self._do(run, what=f"create rbd volume {volume_id} from snapshot {snapshot_id}")

    async def clone_volume(
        self, volume_id: str, source_volume_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        _check_id(volume_id)
        _check_id(source_volume_id)

        def run(ioctx: Any) -> None:
            if self._exists(ioctx, volume_id):
                self._adopt(ioctx, volume_id, size_bytes)
                return
            snap = CLONE_SNAP + volume_id
            with self._open(ioctx, source_volume_id, read_only=False) as src:
                self._ensure_snap(src, snap)
                source = (str(src.id()), snap)
            self._create_sync(ioctx, volume_id, size_bytes, source)

        await self._do(run, what=f"clone rbd volume {source_volume_id} to {volume_id}")

    def _create_sync(
        self, ioctx: Any, volume_id: str, size_bytes: int, source: tuple[str, str] | dict[str, Any] | None
    ) -> None:
        rbd = self._rbd()
        if self._exists(ioctx, volume_id):
            self._adopt(ioctx, volume_id, size_bytes)
            return
        tmp = volume_id + PARTIAL
        self._remove_image(ioctx, tmp)  # a previous attempt that died half-way
        if source is None:
            rbd.RBD().create(
                ioctx, tmp, size_bytes, old_format=False, features=self._features(), data_pool=self.cfg.data_pool
            )
        elif isinstance(source, dict):
            self.restore_member(ioctx, source, tmp)
        else:
            self._clone(ioctx, source, tmp)
        checkpoint("rbd.create.partial")  # fault tests: a crash with only the partial image made
        with self._open(ioctx, tmp, read_only=False) as image:
            image.metadata_set(META_VOLUME, volume_id)
            if image.size() < size_bytes:
                image.resize(size_bytes)
        rbd.RBD().rename(ioctx, tmp, volume_id)
        self._limit_depth(ioctx, volume_id)

    def _clone(self, ioctx: Any, source: tuple[str, str], target: str) -> None:
        rbd = self._rbd()
        image_id, snap = source
        with self._open(ioctx, image_id=image_id) as parent:
            parent_name = parent.get_name()
            if not parent.snap_exists(snap):
                raise NotFound(f"snapshot {snap} no longer exists")
        in_trash = not self._exists(ioctx, parent_name)
        if not in_trash:
            rbd.RBD().clone(
                ioctx, parent_name, snap, ioctx, target, features=self._features(), data_pool=self.cfg.data_pool
            )
            return
        # The source volume was deleted (its image waits in the trash for its snapshots):
        # librbd clones by name only, so copy the snapshot's data instead.
        rbd_image = rbd.Image(ioctx, image_id=image_id, snapshot=snap, read_only=True)
        try:
            rbd_image.copy(ioctx, target, features=self._features(), data_pool=self.cfg.data_pool)
        finally:
            rbd_image.close()

    def _adopt(self, ioctx: Any, volume_id: str, size_bytes: int) -> None:
        """The image exists (a repeated create): check the size, finish what a crash left."""
        with self._open(ioctx, volume_id, read_only=False) as image:
            current = int(image.size())
            if current > size_bytes:
                raise FailedPrecondition(f"rbd image {volume_id} exists with a larger size {current}")
            if current < size_bytes:
                image.resize(size_bytes)
            try:
                image.metadata_get(META_VOLUME)
            except KeyError:
                image.metadata_set(META_VOLUME, volume_id)
        self._limit_depth(ioctx, volume_id)

    def _depth(self, ioctx: Any, name: str) -> int:
        rbd = self._rbd()
        depth = 0
        with self._open(ioctx, name) as image:
            image_id = image.id()
        while True:
            with self._open(ioctx, image_id=image_id) as image:
                try:
                    image_id = image.parent_id()
                except rbd.ImageNotFound:
                    return depth
            depth += 1

    def _limit_depth(self, ioctx: Any, name: str) -> None:
        """Long clone chains make every read walk them: past the limit, copy the data in."""
        if self._depth(ioctx, name) > self.cfg.max_clone_depth:
            self._flatten(ioctx, name)

    def _flatten(self, ioctx: Any, name: str) -> None:
        parent = self._parent(ioctx, name)
        with self._open(ioctx, name, read_only=False) as image:
            image.flatten()
        if parent is not None:
            self._release_clone_snap(ioctx, *parent)

    def _parent(self, ioctx: Any, name: str) -> tuple[str, str] | None:
        """(parent image id, parent snapshot name) of an image, if it is a clone."""
        rbd = self._rbd()
        with self._open(ioctx, name) as image:
            try:
                spec = image.get_parent_image_spec()
                return str(image.parent_id()), str(spec["snap_name"])
            except rbd.ImageNotFound:
                return None

    def _release_clone_snap(self, ioctx: Any, image_id: str, snap: str) -> None:
        """Drop a hidden clone snapshot once nothing hangs from it, then the image itself
        if it was deleted and this was its last snapshot."""
        if not snap.startswith(CLONE_SNAP):
            return
        try:
            with self._open(ioctx, image_id=image_id, read_only=False) as image:
                self._remove_snap_if_childless(image, snap)
        except NotFound:
            return
        self._purge_one(ioctx, image_id)

    def _remove_snap_if_childless(self, image: Any, snap: str) -> bool:
        if not image.snap_exists(snap):
            return True
        image.set_snap(snap)
        try:
            children = list(image.list_children2())
        finally:
            image.set_snap(None)
        if children:
            return False
        if image.is_protected_snap(snap):
            image.unprotect_snap(snap)
        image.remove_snap(snap)
        return True

    async def delete_volume(self, volume_id: str) -> None:
        _check_id(volume_id)
        await self._do(self._delete_sync, volume_id, what=f"delete rbd volume {volume_id}")

    def _delete_sync(self, ioctx: Any, volume_id: str) -> None:
        rbd = self._rbd()
        self._remove_image(ioctx, volume_id + PARTIAL)
        try:
            with self._open(ioctx, volume_id) as image:
                watchers = [str(w["addr"]) for w in image.watchers_list()]
        except NotFound:
            return  # already gone (or in the trash): idempotent
        if watchers:
            raise self._in_use(volume_id, watchers)
        parent = self._parent(ioctx, volume_id)
        with self._open(ioctx, volume_id, read_only=False) as image:
            for snap in list(image.list_snaps()):
                if str(snap["name"]).startswith(CLONE_SNAP):
                    self._remove_snap_if_childless(image, str(snap["name"]))
            has_snaps = bool(list(image.list_snaps()))
        try:
            if has_snaps or self.cfg.trash_grace_s > 0:
                # Snapshots outlive their volume (CSI semantics); a grace period lets an
                # operator restore a deletion by mistake (`rbd trash restore`).
                rbd.RBD().trash_move(ioctx, volume_id, self.cfg.trash_grace_s)
            else:
                rbd.RBD().remove(ioctx, volume_id)
        except rbd.ImageBusy as exc:
            raise self._in_use(volume_id, []) from exc
        except rbd.ImageNotFound:
            return
        if parent is not None:
            self._release_clone_snap(ioctx, *parent)

    @staticmethod
    def _in_use(volume_id: str, watchers: list[str]) -> FailedPrecondition:
        who = ", ".join(watchers) if watchers else "a client that just opened it"
        return FailedPrecondition(
            f"volume {volume_id} is in use: the rbd image still has watchers ({who}); detach it first",
            reason="volume_in_use",
            watchers=watchers,
        )

    def _remove_image(self, ioctx: Any, name: str) -> None:
        rbd = self._rbd()
        with suppress(rbd.ImageNotFound):
            rbd.RBD().remove(ioctx, name)

    async def expand_volume(self, volume_id: str, size_bytes: int) -> None:
        _check_id(volume_id)

        def run(ioctx: Any) -> None:
            with self._open(ioctx, volume_id, read_only=False) as image:
                if image.size() < size_bytes:
                    image.resize(size_bytes)

        await self._do(run, what=f"expand rbd volume {volume_id}")

    # -- the trash ---------------------------------------------------------------------

    async def purge_trash(self) -> int:
        """Remove Berth's trashed images whose grace ended and that have no snapshots left
        (the watcher's reclaim cycle calls this). Returns how many were removed."""

        def run(ioctx: Any) -> int:
            rbd = self._rbd()
            return sum(1 for entry in list(rbd.RBD().trash_list(ioctx)) if self._purge_one(ioctx, str(entry["id"])))

        return await self._do(run, what="purge rbd trash")

    def _purge_one(self, ioctx: Any, image_id: str) -> bool:
        rbd = self._rbd()
        try:
            entry = rbd.RBD().trash_get(ioctx, image_id)
        except rbd.ImageNotFound:
            return False  # not in the trash: a live image
        if entry["deferment_end_time"] > dt.datetime.now():
            return False
        try:
            with self._open(ioctx, image_id=image_id, read_only=False) as image:
                try:
                    image.metadata_get(META_VOLUME)
                except KeyError:
                    return False  # not ours
                if quarantine_mark(image) is not None:
                    return False  # the watcher's quarantine: only the watcher purges it
                for snap in list(image.list_snaps()):
                    if str(snap["name"]).startswith(CLONE_SNAP):
                        self._remove_snap_if_childless(image, str(snap["name"]))
                if list(image.list_snaps()):
                    return False
        except NotFound:
            return False
        try:
            rbd.RBD().trash_remove(ioctx, image_id)
        except (rbd.ImageNotFound, rbd.ImageHasSnapshots, rbd.ImageBusy):
            return False
        return True

    # -- snapshots ---------------------------------------------------------------------

    def _ensure_snap(self, image: Any, snap: str) -> None:
        if not image.snap_exists(snap):
            image.create_snap(snap)
        if not image.is_protected_snap(snap):
            image.protect_snap(snap)

    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        _check_id(snapshot_id)
        _check_id(volume_id)

        def run(ioctx: Any) -> None:
            entry = self.index.get("snap." + snapshot_id)
            with self._open(ioctx, volume_id, read_only=False) as image:
                image_id = str(image.id())
                if entry is not None and entry["image_id"] != image_id:
                    raise FailedPrecondition(f"snapshot {snapshot_id} already exists on another volume")
                # Index first: a crash between the two leaves an index entry without a
                # snapshot (harmless, the retry creates it), never an unfindable snapshot.
                if entry is None:
                    self.index.set("snap." + snapshot_id, {"image_id": image_id, "volume_id": volume_id})
                self._ensure_snap(image, snapshot_id)

        await self._do(run, what=f"snapshot rbd volume {volume_id}")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        _check_id(snapshot_id)

        def run(ioctx: Any) -> None:
            entry = self.index.get("snap." + snapshot_id)
            if entry is None:
                return
            if entry.get("group"):
                raise FailedPrecondition(
                    f"snapshot {snapshot_id} is a member of group snapshot {entry['group']}: it goes with the group",
                    reason="snapshot_in_group",
                )
            image_id = str(entry["image_id"])
            with suppress(NotFound):
                self._delete_snap(ioctx, image_id, snapshot_id)
            self.index.remove("snap." + snapshot_id)
            self._purge_one(ioctx, image_id)

        await self._do(run, what=f"delete rbd snapshot {snapshot_id}")

    def _delete_snap(self, ioctx: Any, image_id: str, snap: str) -> None:
        rbd = self._rbd()
        with self._open(ioctx, image_id=image_id, read_only=False) as image:
            if not image.snap_exists(snap):
                return
            image.set_snap(snap)
            children = list(image.list_children2())
            image.set_snap(None)
            # Volumes made from this snapshot must outlive it: give them their own data.
            for child in children:
                if child["pool"] != self.cfg.pool:
                    raise FailedPrecondition(f"snapshot {snap} has a clone in pool {child['pool']}")
                with self._open(ioctx, image_id=str(child["id"]), read_only=False) as c:
                    c.flatten()
            if image.is_protected_snap(snap):
                try:
                    image.unprotect_snap(snap)
                except rbd.ImageBusy as exc:
                    raise FailedPrecondition(f"snapshot {snap} still has clones") from exc
            image.remove_snap(snap)

    # -- accounting --------------------------------------------------------------------

    async def capacity(self) -> Capacity:
        pool = self.cfg.data_pool or self.cfg.pool
        df = await asyncio.to_thread(self.conn.mon, {"prefix": "df"})
        for p in df.get("pools", []):
            if p.get("name") == pool:
                stats = p["stats"]
                free = int(stats["max_avail"])
                return Capacity(total_bytes=int(stats["stored"]) + free, free_bytes=free)
        raise NotFound(f"pool {pool} not found in the cluster's df")

    async def inventory(self) -> list[InventoryItem]:
        def run(ioctx: Any) -> list[InventoryItem]:
            rbd = self._rbd()
            items: list[InventoryItem] = []
            for entry in list(rbd.RBD().list2(ioctx)):
                items.extend(self._inventory_image(ioctx, image_id=str(entry["id"]), name=str(entry["name"])))
            for entry in list(rbd.RBD().trash_list(ioctx)):
                # A deleted volume's surviving snapshots are still Berth's (a quarantined
                # volume's are quarantined with it: `trash` lists the volume).
                found = self._inventory_image(ioctx, image_id=str(entry["id"]), in_trash=True)
                items.extend(i for i in found if i.kind == "snapshot")
            return items

        return await self._do(run, what="rbd inventory")

    def _inventory_image(
        self, ioctx: Any, *, image_id: str, name: str | None = None, in_trash: bool = False
    ) -> list[InventoryItem]:
        try:
            with self._open(ioctx, image_id=image_id) as image:
                if in_trash and quarantine_mark(image) is not None:
                    return []
                try:
                    volume_id = str(image.metadata_get(META_VOLUME))
                except KeyError:
                    if name is None or not name.endswith(PARTIAL):
                        return []  # not Berth's (shared pools hold other images)
                    volume_id = name[: -len(PARTIAL)]
                size = int(image.size())
                created = image.create_timestamp().replace(tzinfo=dt.UTC)
                users = tuple(sorted(str(w["addr"]) for w in image.watchers_list()))
                items = [
                    InventoryItem(
                        "volume",
                        volume_id,
                        size,
                        self._used(image, size),
                        created_at=created,
                        users=users,
                        partial=name is not None and name.endswith(PARTIAL),
                    )
                ]
                for snap in image.list_snaps():
                    snap_name: str | None = str(snap["name"])
                    if snap.get("namespace") == GROUP_NAMESPACE:
                        snap_name = self.member_id(volume_id, snap)
                    if snap_name and not snap_name.startswith((CLONE_SNAP, QUARANTINE_SNAP)):
                        at = image.get_snap_timestamp(int(snap["id"])).replace(tzinfo=dt.UTC)
                        items.append(InventoryItem("snapshot", snap_name, int(snap["size"]), 0, created_at=at))
                return items
        except NotFound:
            return []  # deleted while we listed

    @staticmethod
    def _used(image: Any, size: int) -> int:
        """Allocated bytes, per object from the object map (fast-diff): no data read."""
        used = 0

        def cb(offset: int, length: int, exists: bool) -> None:
            nonlocal used
            if exists:
                used += length

        try:
            image.diff_iterate(0, size, None, cb, whole_object=True)
        except Exception:
            return 0
        return used

    async def describe_volume(self, volume_id: str) -> RbdVolumeInfo:
        _check_id(volume_id)

        def run(ioctx: Any) -> RbdVolumeInfo:
            rbd = self._rbd()
            with self._open(ioctx, volume_id) as image:
                meta = dict(image.metadata_list())
                qos = {k: int(v) for k, v in ((k, meta.get("conf_" + k)) for k in QOS_KEYS.values()) if v}
                try:
                    parent: str | None = str(image.get_parent_image_spec()["image_name"])
                except rbd.ImageNotFound:
                    parent = None
                lockers = image.list_lockers()
                return RbdVolumeInfo(
                    volume_id=volume_id,
                    image_id=str(image.id()),
                    size_bytes=int(image.size()),
                    watchers=[str(w["addr"]) for w in image.watchers_list()],
                    lock_owners=[str(entry[2]) for entry in (lockers or {}).get("lockers", [])] if lockers else [],
                    node_addresses={
                        k[len(META_NODE) : -len(".addr")]: v
                        for k, v in meta.items()
                        if k.startswith(META_NODE) and k.endswith(".addr")
                    },
                    qos=qos,
                    parent=parent,
                    features=str(rbd.RBD().features_to_string(image.features())).split(","),
                )

        return await self._do(run, what=f"describe rbd volume {volume_id}")

    # -- fencing -----------------------------------------------------------------------

    async def record_node_address(self, volume_id: str, node_id: str, client_address: str) -> None:
        """Called by the node side after attach: which client address `node_id` uses for
        this volume, i.e. what a fence of that node must blocklist."""
        _check_id(volume_id)
        key, addr = META_NODE + _check_node(node_id) + ".addr", normalize_addr(client_address)

        def run(ioctx: Any) -> None:
            with self._open(ioctx, volume_id, read_only=False) as image:
                image.metadata_set(key, addr)

        await self._do(run, what=f"record node address on {volume_id}")

    async def forget_node_address(self, volume_id: str, node_id: str) -> None:
        """Called after a clean detach."""
        _check_id(volume_id)
        key = META_NODE + _check_node(node_id) + ".addr"

        def run(ioctx: Any) -> None:
            with suppress(NotFound), self._open(ioctx, volume_id, read_only=False) as image, suppress(KeyError):
                image.metadata_remove(key)

        await self._do(run, what=f"forget node address on {volume_id}")

    def _recorded(self, ioctx: Any, node_id: str, volume_ids: Sequence[str]) -> dict[str, str]:
        """{volume id: address} that `node_id` recorded on these volumes' images."""
        key = META_NODE + node_id + ".addr"
        found: dict[str, str] = {}
        for volume_id in volume_ids:
            try:
                with self._open(ioctx, volume_id) as image:
                    found[volume_id] = str(image.metadata_get(key))
            except (KeyError, NotFound):
                continue
        return found

    def node_context(self, volume_id: str) -> dict[str, str]:
        """What a node needs to attach (CSI publish context): where the image is. Secrets
        stay out (the context is stored): the node uses its own cephx key for `user`."""
        ctx = {"pool": self.cfg.pool, "image": _check_id(volume_id), "user": self.cfg.ceph.user}
        if self.cfg.ceph.mon_host:
            ctx["mon_host"] = self.cfg.ceph.mon_host
        if self.cfg.ceph.conf:
            ctx["conf"] = self.cfg.ceph.conf
        return ctx

    async def fence(self, target: FenceTarget) -> list[str]:
        """Cut the node off: blocklist its client addresses (the attacher's, those recorded
        on its volumes' images, and those of an earlier fence of it), wait until the OSDs
        enforce it, then break its exclusive locks so the next owner takes them at once.
        Idempotent; returns what was cut (`blocklist <addr>`, `lock <volume> <owner>`)."""
        node_id = _check_node(target.node_id)
        given = {normalize_addr(a) for a in target.client_addresses}
        for v in target.volume_ids:
            _check_id(v)

        def run(ioctx: Any) -> list[str]:
            previous = self.index.get("fence." + node_id) or {}
            volumes = sorted(set(target.volume_ids) | set(previous.get("volumes", [])))
            recorded = self._recorded(ioctx, node_id, volumes)
            addrs = sorted(given | set(recorded.values()) | set(previous.get("addresses", [])))
            # Recorded before acting: unfence must know every entry this fence may add.
            self.index.set("fence." + node_id, {"addresses": addrs, "volumes": volumes})
            cut = []
            for addr in addrs:
                self.blocklist.add(addr, self.cfg.ceph.fence_expire_s)
                cut.append(f"blocklist {addr}")
            if addrs:
                self.blocklist.wait_enforced(self.blocklist.osdmap_epoch())
            for volume_id in volumes:
                cut += self._break_locks(ioctx, volume_id, addrs)
            return cut

        return await self._do(run, what=f"fence node {node_id}")

    def _break_locks(self, ioctx: Any, volume_id: str, fenced: list[str]) -> list[str]:
        """Break the fenced clients' locks on the image. A lock held by an address this
        fence does not cover is left alone (it may be the next owner's) but reported, so
        the fence record shows a volume the node may still reach through an unknown
        address (one it never reported nor recorded)."""
        out: list[str] = []
        try:
            with self._open(ioctx, volume_id, read_only=False) as image:
                for owner in list(image.lock_get_owners()):
                    if addr_matches(str(owner["owner"]), fenced):
                        image.lock_break(owner["mode"], owner["owner"])
                        out.append(f"lock {volume_id} {owner['owner']}")
                    else:
                        log.warning(
                            "fence: %s is locked by %s, not among the fenced addresses", volume_id, owner["owner"]
                        )
                        out.append(f"uncovered-lock {volume_id} {owner['owner']}")
        except NotFound:
            pass
        return out

    async def unfence(self, target: FenceTarget) -> list[str]:
        """Lift a fence (the attacher does this only once the node proved it dropped its
        mounts): remove the blocklist entries and the node's stale address records."""
        node_id = _check_node(target.node_id)

        def run(ioctx: Any) -> list[str]:
            record = self.index.get("fence." + node_id) or {}
            addrs = set(record.get("addresses", [])) | {normalize_addr(a) for a in target.client_addresses}
            volumes = sorted(set(record.get("volumes", [])) | set(target.volume_ids))
            for addr in sorted(addrs):
                self.blocklist.remove(addr)
            key = META_NODE + node_id + ".addr"
            for volume_id, addr in self._recorded(ioctx, node_id, volumes).items():
                if addr in addrs:
                    with self._open(ioctx, volume_id, read_only=False) as image, suppress(KeyError):
                        image.metadata_remove(key)
            self.index.remove("fence." + node_id)
            return [f"blocklist {a}" for a in sorted(addrs)]

        return await self._do(run, what=f"unfence node {node_id}")

    async def fenced_addresses(self, node_id: str) -> list[str]:
        record = await asyncio.to_thread(self.index.get, "fence." + _check_node(node_id))
        return list((record or {}).get("addresses", []))

    async def blocklist_entries(self) -> list[str]:
        """The cluster's current blocklist (all entries, not only Berth's)."""
        return await asyncio.to_thread(self.blocklist.entries)

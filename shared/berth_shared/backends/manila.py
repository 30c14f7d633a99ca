"""The Manila backend: shared volumes as Manila shares (CephFS protocol) of one share
type, through openstacksdk, with Berth's own credentials from `clouds.yaml`.

Records as for Cinder: the share `berth-<id>` with metadata `berth_volume_id`, snapshots
`berth-<id>` with `berth_snapshot_id`. A clone of a volume is a share from a hidden
snapshot `berth-clone-<new id>` of its source (Manila has no share-to-share copy), which
goes once the clone is available (CephFS clones are full copies).

Access: a node mounts with its own cephx id (`berth-node-<node id>`, as for Berth's
CephFS backend), allowed by a Manila `cephx` access rule; `authorize` waits until the rule
is `active` before it answers (a rule still `queued_to_apply` makes the mount fail), and
returns the key Manila made. With `ceph` in the config, a fence evicts the node's CephFS
sessions and blocklists them, through the same code as Berth's CephFS backend.
"""

from __future__ import annotations

from typing import Any

from berth_shared.backends.base import Capacity, FenceTarget, InventoryItem, Unsupported
from berth_shared.backends.openstack_common import (
    GIB,
    META_SNAPSHOT,
    META_TENANT,
    META_VOLUME,
    Cloud,
    TypeConfig,
    berth_metadata,
    berth_name,
    gib,
    parse_type_config,
    pool_capacity,
)
from berth_shared.backends.openstack_watch import ManilaWatchOps, parse_time, quarantined
from berth_shared.errors import FailedPrecondition, NotFound

# Extend and the share metadata need >= 2.7 (openstacksdk sends none by default: 404);
# access rule metadata and states 2.45.
MICROVERSION = "2.45"
NODE_CLIENT_PREFIX = "berth-node-"
CLONE_SNAP = "clone-"  # + new volume id, under the berth- prefix


def validate_manila_config(config: dict[str, Any]) -> tuple[TypeConfig, dict[str, Any]]:
    from berth_shared.backends.cephfs import validate_cephfs_config

    return parse_type_config(
        "manila", config, "share_type", validate_cephfs_config, "CephFS (conf, keyring, user, fs_name)"
    )


def _ok(obj: Any) -> bool:
    return obj is not None and obj.status == "available"


def _failed(obj: Any) -> bool:
    return str(obj.status).startswith("error")


class ManilaBackend(ManilaWatchOps):
    kind = "manila"

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg, self.config = validate_manila_config(config)
        self.cloud = Cloud(self.cfg.cloud, microversions={"shared_file_system": MICROVERSION})
        self._fs: Any = None

    async def close(self) -> None:
        self.cloud.close()
        if self._fs is not None:
            await self._fs.close()

    def _ceph(self) -> Any:
        if self.cfg.ceph is None:
            raise Unsupported("this Manila type has no 'ceph' config: fencing at Ceph needs it")
        if self._fs is None:
            from berth_shared.backends.cephfs import CephFsBackend

            self._fs = CephFsBackend(self.cfg.ceph)
        return self._fs

    # -- lookups -----------------------------------------------------------------------

    @staticmethod
    def _find_share(c: Any, volume_id: str) -> Any:
        found = [
            s
            for s in c.shared_file_system.shares(name=berth_name(volume_id))
            if (c.shared_file_system.get_share(s.id).metadata or {}).get(META_VOLUME) == volume_id
        ]
        return min(found, key=lambda s: (s.created_at or "", s.id)) if found else None

    async def _share(self, volume_id: str) -> Any:
        return await self.cloud.call(f"find share {volume_id}", lambda c: self._find_share(c, volume_id))

    async def _require(self, volume_id: str) -> Any:
        share = await self._share(volume_id)
        if share is None:
            raise NotFound(f"manila share for {volume_id} not found")
        return share

    @staticmethod
    def _find_snapshot(c: Any, name: str) -> Any:
        return next(iter(c.shared_file_system.share_snapshots(name=name)), None)

    async def _wait_share(self, what: str, share_id: str, done: Any) -> Any:
        def fetch(c: Any) -> Any:
            from openstack import exceptions

            try:
                return c.shared_file_system.get_share(share_id)
            except exceptions.NotFoundException:
                return None

        return await self.cloud.wait(what, fetch, done, _failed)

    async def _wait_snapshot(self, what: str, snap_id: str, done: Any) -> Any:
        def fetch(c: Any) -> Any:
            from openstack import exceptions

            try:
                return c.shared_file_system.get_share_snapshot(snap_id)
            except exceptions.NotFoundException:
                return None

        return await self.cloud.wait(what, fetch, done, _failed)

    # -- shares ------------------------------------------------------------------------

    async def create_volume(self, volume_id: str, size_bytes: int, *, tenant: str | None = None) -> None:
        await self._create(volume_id, size_bytes, tenant, None)

    async def create_volume_from_snapshot(
        self, volume_id: str, snapshot_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        if await self._share(volume_id) is None:
            snap = await self.cloud.call("find snapshot", lambda c: self._find_snapshot(c, berth_name(snapshot_id)))
            if snap is None:
                raise NotFound(f"manila snapshot for {snapshot_id} not found")
            await self._create(volume_id, size_bytes, tenant, snap)
        else:
            await self._create(volume_id, size_bytes, tenant, None)

    async def clone_volume(
        self, volume_id: str, source_volume_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        hidden = CLONE_SNAP + volume_id
        if await self._share(volume_id) is None:
            await self.create_snapshot(hidden, source_volume_id)
            snap = await self.cloud.call("find snapshot", lambda c: self._find_snapshot(c, berth_name(hidden)))
            await self._create(volume_id, size_bytes, tenant, snap)
        else:
            await self._create(volume_id, size_bytes, tenant, None)
        await self.delete_snapshot(hidden)

    async def _create(self, volume_id: str, size_bytes: int, tenant: str | None, snapshot: Any) -> None:
        what = f"create manila share {volume_id}"
        share = await self._share(volume_id)
        if share is not None and _failed(share):
            await self._delete(share.id, what)
            share = None
        if share is None:
            attrs: dict[str, Any] = {
                "name": berth_name(volume_id),
                # From a snapshot: at its size, then extended. Measured with the CephFS
                # driver: a share made bigger than its snapshot reports the bigger size but
                # keeps the snapshot's quota on the subvolume.
                "size": int(snapshot.size) if snapshot else gib(size_bytes),
                "share_proto": "CEPHFS",
                "share_type": self.cfg.type_name,
                "metadata": berth_metadata(volume_id, tenant),
            }
            if snapshot:
                attrs["snapshot_id"] = snapshot.id
            if self.cfg.availability_zone:
                attrs["availability_zone"] = self.cfg.availability_zone
            await self.cloud.call(what, lambda c: c.shared_file_system.create_share(**attrs))
            share = await self._require(volume_id)
        share = await self._wait_share(what, share.id, _ok)
        if int(share.size) * GIB < size_bytes:
            await self.expand_volume(volume_id, size_bytes)

    async def delete_volume(self, volume_id: str) -> None:
        share = await self._share(volume_id)
        if share is None:
            return
        await self._delete(share.id, f"delete manila share {volume_id}")

    async def _delete(self, share_id: str, what: str) -> None:
        def run(c: Any) -> None:
            from openstack import exceptions

            try:
                share = c.shared_file_system.get_share(share_id)
            except exceptions.NotFoundException:
                return
            if share.status != "deleting":
                c.shared_file_system.delete_share(share_id, ignore_missing=True)

        await self.cloud.call(what, run)
        await self._wait_share(what, share_id, lambda s: s is None)

    async def expand_volume(self, volume_id: str, size_bytes: int) -> None:
        what = f"extend manila share {volume_id}"
        share = await self._require(volume_id)
        want = gib(size_bytes)
        if int(share.size) >= want:
            return
        await self.cloud.call(what, lambda c: c.shared_file_system.resize_share(share.id, want, no_shrink=True))
        await self._wait_share(what, share.id, lambda s: _ok(s) and int(s.size) >= want)

    # -- snapshots ---------------------------------------------------------------------

    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        what = f"create manila snapshot {snapshot_id}"
        name = berth_name(snapshot_id)
        snap = await self.cloud.call(what, lambda c: self._find_snapshot(c, name))
        if snap is None:
            share = await self._require(volume_id)
            snap = await self.cloud.call(
                what,
                lambda c: c.shared_file_system.create_share_snapshot(
                    share_id=share.id, name=name, description=f"{META_SNAPSHOT}={snapshot_id}", force=True
                ),
            )
        await self._wait_snapshot(what, snap.id, _ok)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        what = f"delete manila snapshot {snapshot_id}"
        snap = await self.cloud.call(what, lambda c: self._find_snapshot(c, berth_name(snapshot_id)))
        if snap is None:
            return
        await self.cloud.call(what, lambda c: c.shared_file_system.delete_share_snapshot(snap.id, ignore_missing=True))
        await self._wait_snapshot(what, snap.id, lambda s: s is None)

    # -- access and the node side ------------------------------------------------------

    async def authorize(self, volume_id: str, cephx_id: str, *, readonly: bool = False) -> str:
        """Allow a cephx id on the share; returns its key once the rule is active."""
        what = f"allow {cephx_id} on {volume_id}"
        share = await self._require(volume_id)
        level = "ro" if readonly else "rw"

        def rule_of(c: Any) -> Any:
            return next((r for r in c.shared_file_system.access_rules(share) if r.access_to == cephx_id), None)

        def ensure(c: Any) -> Any:
            rule = rule_of(c)
            if rule is None:
                c.shared_file_system.create_access_rule(
                    share.id, access_type="cephx", access_to=cephx_id, access_level=level
                )
                rule = rule_of(c)
            return rule

        await self.cloud.call(what, ensure)
        rule = await self.cloud.wait(
            what, rule_of, lambda r: r is not None and r.state == "active", lambda r: r.state == "error"
        )
        return str(rule.access_key or "")

    async def deauthorize(self, volume_id: str, cephx_id: str) -> None:
        share = await self._share(volume_id)
        if share is None:
            return

        what = f"deny {cephx_id} on {volume_id}"

        def rules(c: Any) -> list[Any]:
            return [r for r in c.shared_file_system.access_rules(share) if r.access_to == cephx_id]

        def run(c: Any) -> None:
            for r in rules(c):
                if r.state not in ("queued_to_deny", "denying"):
                    c.shared_file_system.delete_access_rule(r.id, share.id, ignore_missing=True)

        await self.cloud.call(what, run)
        # Gone from Ceph too before we answer: the node's id no longer opens the share.
        await self.cloud.wait(what, lambda c: rules(c) or None, lambda r: r is None, lambda r: False)

    async def export_location(self, volume_id: str) -> tuple[str, str]:
        """(monitor addresses, path) of the share: what ceph-fuse needs."""
        share = await self._require(volume_id)
        paths = await self.cloud.call(
            "export locations", lambda c: [e.path for e in c.shared_file_system.export_locations(share.id)]
        )
        if not paths:
            raise FailedPrecondition(f"share of {volume_id} has no export location yet", reason="not_ready")
        mons, _, path = str(paths[0]).rpartition(":/")
        return mons, "/" + path

    def node_context(self, volume_id: str) -> dict[str, str]:
        raise Unsupported("manila shares are published through attach(), which allows the node's cephx id")

    async def attach(self, volume_id: str, node_id: str, connector: dict[str, Any], mode: str = "rw") -> dict[str, str]:
        """Allow the node's cephx id (active before we answer) and say where to mount."""
        client = NODE_CLIENT_PREFIX + node_id
        share = await self.cloud.call("find share", lambda c: self._share_of(c, volume_id))
        if share is not None and quarantined(share):
            raise FailedPrecondition(f"volume {volume_id} is quarantined", reason="volume_quarantined")
        await self.authorize(volume_id, client, readonly=mode == "ro")
        mons, path = await self.export_location(volume_id)
        ctx = {"driver": "cephfs", "path": path, "mon_host": mons, "client_id_prefix": NODE_CLIENT_PREFIX}
        if self.cfg.ceph is not None:
            ctx["fs_name"] = str(self.cfg.ceph.get("fs_name", "cephfs"))
            if "conf" in self.cfg.ceph:
                ctx["conf"] = str(self.cfg.ceph["conf"])
        return ctx

    async def detach(self, volume_id: str, node_id: str) -> None:
        await self.deauthorize(volume_id, NODE_CLIENT_PREFIX + node_id)

    # -- accounting --------------------------------------------------------------------

    async def capacity(self) -> Capacity:
        def run(c: Any) -> Capacity:
            stype = next((t for t in c.shared_file_system.share_types() if t.name == self.cfg.type_name), None)
            if stype is None:
                raise NotFound(f"share type {self.cfg.type_name} not found")
            backend = (stype.extra_specs or {}).get("share_backend_name")
            return pool_capacity(c.shared_file_system.storage_pools(details=True), "share_backend_name", backend)

        return await self.cloud.call(f"capacity of share type {self.cfg.type_name}", run)

    async def inventory(self) -> list[InventoryItem]:
        def run(c: Any) -> list[InventoryItem]:
            items: list[InventoryItem] = []
            sfs = c.shared_file_system
            for s in sfs.shares(details=True):
                meta = s.metadata or {}
                bid = meta.get(META_VOLUME)
                if bid and s.share_type_name == self.cfg.type_name and not quarantined(s):
                    size = int(s.size) * GIB
                    created, partial = parse_time(s.created_at), s.status in ("creating", "error")
                    tenant = meta.get(META_TENANT)
                    items.append(InventoryItem("volume", bid, size, size, created, tenant, partial=partial))
            for snap in sfs.share_snapshots(details=True):
                desc = str(snap.description or "")
                if desc.startswith(META_SNAPSHOT + "="):
                    size = int(snap.size) * GIB
                    sid, created = desc.split("=", 1)[1], parse_time(snap.created_at)
                    items.append(InventoryItem("snapshot", sid, size, size, created, partial=snap.status == "error"))
            return items

        return await self.cloud.call("manila inventory", run)

    # -- fencing -----------------------------------------------------------------------

    async def fence(self, target: FenceTarget) -> list[str]:
        """Evict and blocklist the node's CephFS sessions (its cephx id and addresses)."""
        if self.cfg.ceph is None:
            raise Unsupported("a Manila cluster without 'ceph' config cannot fence at the storage")
        return list(await self._ceph().fence(FenceTarget(target.node_id, (), target.client_addresses)))

    async def unfence(self, target: FenceTarget) -> list[str]:
        if self.cfg.ceph is None:
            return []
        return list(await self._ceph().unfence(FenceTarget(target.node_id, (), target.client_addresses)))

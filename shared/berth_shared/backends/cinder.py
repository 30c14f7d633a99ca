"""The Cinder backend: block volumes as Cinder volumes of one volume type, through
openstacksdk, with Berth's own credentials from `clouds.yaml`.

Records: a volume is the Cinder volume named `berth-<id>` with metadata
`berth_volume_id=<id>` (and `berth_tenant`); a snapshot is `berth-<id>` with
`berth_snapshot_id`. Lookups go by name and check the metadata, so a create repeated after
a crash (Cinder answered, Berth had not committed) finds and adopts its volume instead of
making a second one, and the inventory ties every volume to its record.

Attachments use the Cinder attachments API: one attachment per node, created with the
node's connector and an instance id derived from the node id (so a node's attachments
can be found again after any crash), then completed; deleted on detach and force-detached
on a fence. With `ceph` in the config (an RBD-backed type), a fence also blocklists the
node at Ceph and QoS is set on the image, where the node's librbd (rbd-fuse) enforces it
(`openstack_watch`: QoS, IO counters, the quarantine).
"""

from __future__ import annotations

import uuid
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
from berth_shared.backends.openstack_watch import CinderWatchOps, parse_time, quarantined
from berth_shared.errors import FailedPrecondition, NotFound
from berth_shared.faults import checkpoint

# Attachments need 3.27, completing them 3.44, extending an attached volume 3.42;
# multiattach 3.50, an attachment's mode 3.54.
MICROVERSION = "3.54"
# A node's attachments carry this instance id: uuid5 of the node id in Berth's namespace.
NODE_NAMESPACE = uuid.UUID("6f1c3a2e-9d8b-4b7e-a1f0-5b2c9e7d4a10")
BUSY = {"creating", "extending", "deleting", "attaching", "detaching", "downloading", "reserved"}


def node_instance(node_id: str) -> str:
    return str(uuid.uuid5(NODE_NAMESPACE, node_id))


def validate_cinder_config(config: dict[str, Any]) -> tuple[TypeConfig, dict[str, Any]]:
    from berth_shared.backends.rbd import validate_rbd_config

    return parse_type_config("cinder", config, "volume_type", validate_rbd_config, "RBD (conf, keyring, user, pool)")


class CinderBackend(CinderWatchOps):
    kind = "cinder"

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg, self.config = validate_cinder_config(config)
        self.cloud = Cloud(self.cfg.cloud, microversions={"block_storage": MICROVERSION})
        self._rbd: Any = None

    async def close(self) -> None:
        self.cloud.close()
        if self._rbd is not None:
            await self._rbd.close()

    def _has_ceph(self) -> bool:
        return self.cfg.ceph is not None

    def _ceph(self) -> Any:
        if self.cfg.ceph is None:
            raise Unsupported("this Cinder type has no 'ceph' config: QoS and Ceph fencing need it")
        if self._rbd is None:
            from berth_shared.backends.rbd import RbdBackend

            self._rbd = RbdBackend(self.cfg.ceph)
        return self._rbd

    # -- lookups -----------------------------------------------------------------------

    @staticmethod
    def _find_volume(conn: Any, volume_id: str) -> Any:
        """The volume of this Berth id, or None. Duplicates (two replicas created at once)
        resolve to the oldest; `create_volume` deletes the others."""
        found = [
            v
            for v in conn.block_storage.volumes(details=True, name=berth_name(volume_id))
            if (v.metadata or {}).get(META_VOLUME) == volume_id
        ]
        return min(found, key=lambda v: (v.created_at or "", v.id)) if found else None

    async def _volume(self, volume_id: str) -> Any:
        return await self.cloud.call(f"find volume {volume_id}", lambda c: self._find_volume(c, volume_id))

    async def _require(self, volume_id: str) -> Any:
        vol = await self._volume(volume_id)
        if vol is None:
            raise NotFound(f"cinder volume for {volume_id} not found")
        return vol

    @staticmethod
    def _find_snapshot(conn: Any, snapshot_id: str) -> Any:
        for s in conn.block_storage.snapshots(details=True, name=berth_name(snapshot_id)):
            if (s.metadata or {}).get(META_SNAPSHOT) == snapshot_id:
                return s
        return None

    async def _wait_volume(self, what: str, cinder_id: str, done: Any) -> Any:
        def fetch(c: Any) -> Any:
            return c.block_storage.find_volume(cinder_id, ignore_missing=True)

        return await self.cloud.wait(
            what, fetch, done, lambda v: str(v.status).startswith("error") and v.status != "error_extending"
        )

    # -- volumes -----------------------------------------------------------------------

    async def create_volume(self, volume_id: str, size_bytes: int, *, tenant: str | None = None) -> None:
        await self._create(volume_id, size_bytes, tenant, {})

    async def create_volume_from_snapshot(
        self, volume_id: str, snapshot_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        snap = await self.cloud.call(f"find snapshot {snapshot_id}", lambda c: self._find_snapshot(c, snapshot_id))
        if snap is None and await self._volume(volume_id) is None:
            raise NotFound(f"cinder snapshot for {snapshot_id} not found")
        await self._create(volume_id, size_bytes, tenant, {"snapshot_id": snap.id} if snap else {})

    async def clone_volume(
        self, volume_id: str, source_volume_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        source = await self._volume(source_volume_id)
        if source is None and await self._volume(volume_id) is None:
            raise NotFound(f"cinder volume for {source_volume_id} not found")
        await self._create(volume_id, size_bytes, tenant, {"source_volume_id": source.id} if source else {})

    async def _create(self, volume_id: str, size_bytes: int, tenant: str | None, source: dict[str, str]) -> None:
        what = f"create cinder volume {volume_id}"
        vol = await self._volume(volume_id)
        if vol is not None and vol.status == "error":
            # A failed earlier attempt: remove it and try afresh.
            await self._delete(vol.id, what)
            vol = None
        if vol is None:
            meta = berth_metadata(volume_id, tenant)
            attrs: dict[str, Any] = {
                "name": berth_name(volume_id),
                "size": gib(size_bytes),
                "volume_type": self.cfg.type_name,
                "metadata": meta,
                **source,
            }
            if self.cfg.availability_zone:
                attrs["availability_zone"] = self.cfg.availability_zone
            vol = await self.cloud.call(what, lambda c: c.block_storage.create_volume(**attrs))
            checkpoint("cinder.create.after_request")  # crash tests: Cinder has it, Berth does not know
            # Another replica may have created one at the same moment: keep the oldest.
            await self._drop_duplicates(volume_id)
            vol = await self._require(volume_id)
        vol = await self._wait_volume(what, vol.id, lambda v: v is not None and v.status in ("available", "in-use"))
        if int(vol.size) * GIB < size_bytes:
            await self.expand_volume(volume_id, size_bytes)

    async def _drop_duplicates(self, volume_id: str) -> None:
        def run(c: Any) -> None:
            keep = self._find_volume(c, volume_id)
            for v in c.block_storage.volumes(details=True, name=berth_name(volume_id)):
                if keep is not None and v.id != keep.id and (v.metadata or {}).get(META_VOLUME) == volume_id:
                    c.block_storage.delete_volume(v, ignore_missing=True)

        await self.cloud.call(f"deduplicate {volume_id}", run)

    async def delete_volume(self, volume_id: str) -> None:
        """Gone already is success. A volume still attached is refused (409 volume_in_use)
        and left as it is: the caller decides, nothing here loops on it."""
        vol = await self._volume(volume_id)
        if vol is None:
            return
        if vol.status == "in-use" or vol.attachments:
            nodes = sorted({str(a.get("server_id") or a.get("attachment_id")) for a in vol.attachments or []})
            raise FailedPrecondition(
                f"volume {volume_id} is still attached in Cinder ({', '.join(nodes)})",
                reason="volume_in_use",
                attachments=nodes,
            )
        await self._delete(vol.id, f"delete cinder volume {volume_id}")

    async def _delete(self, cinder_id: str, what: str) -> None:
        def run(c: Any) -> None:
            vol = c.block_storage.find_volume(cinder_id, ignore_missing=True)
            if vol is not None and vol.status != "deleting":
                c.block_storage.delete_volume(vol, ignore_missing=True)

        await self.cloud.call(what, run)
        await self._wait_volume(what, cinder_id, lambda v: v is None)

    async def expand_volume(self, volume_id: str, size_bytes: int) -> None:
        what = f"extend cinder volume {volume_id}"
        vol = await self._require(volume_id)
        want = gib(size_bytes)
        if vol.status in BUSY:
            vol = await self._wait_volume(what, vol.id, lambda v: v is not None and v.status not in BUSY)
        if int(vol.size) >= want:
            return
        await self.cloud.call(what, lambda c: c.block_storage.extend_volume(vol.id, want))
        await self._wait_volume(
            what, vol.id, lambda v: v is not None and int(v.size) >= want and v.status in ("available", "in-use")
        )

    # -- snapshots ---------------------------------------------------------------------

    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        what = f"create cinder snapshot {snapshot_id}"
        snap = await self.cloud.call(what, lambda c: self._find_snapshot(c, snapshot_id))
        if snap is None:
            vol = await self._require(volume_id)
            snap = await self.cloud.call(
                what,
                lambda c: c.block_storage.create_snapshot(
                    volume_id=vol.id,
                    name=berth_name(snapshot_id),
                    metadata={META_SNAPSHOT: snapshot_id, META_VOLUME: volume_id},
                    force=True,  # an attached volume may be snapshotted (crash-consistent)
                ),
            )
        sid = snap.id
        await self.cloud.wait(
            what,
            lambda c: c.block_storage.find_snapshot(sid, ignore_missing=True),
            lambda s: s is not None and s.status == "available",
            lambda s: str(s.status).startswith("error"),
        )

    async def delete_snapshot(self, snapshot_id: str) -> None:
        what = f"delete cinder snapshot {snapshot_id}"
        snap = await self.cloud.call(what, lambda c: self._find_snapshot(c, snapshot_id))
        if snap is None:
            return
        sid = snap.id
        await self.cloud.call(what, lambda c: c.block_storage.delete_snapshot(sid, ignore_missing=True))
        await self.cloud.wait(
            what,
            lambda c: c.block_storage.find_snapshot(sid, ignore_missing=True),
            lambda s: s is None,
            lambda s: s.status == "error_deleting",
        )

    # -- capacity and inventory --------------------------------------------------------

    async def capacity(self) -> Capacity:
        """The type's backend pools as the scheduler sees them (RBD: Ceph's own figures)."""

        def run(c: Any) -> Capacity:
            vtype = c.block_storage.find_type(self.cfg.type_name, ignore_missing=False)
            backend = (vtype.extra_specs or {}).get("volume_backend_name")
            return pool_capacity(c.block_storage.backend_pools(), "volume_backend_name", backend)

        return await self.cloud.call(f"capacity of type {self.cfg.type_name}", run)

    async def inventory(self) -> list[InventoryItem]:
        """Every Berth volume and snapshot of this type (paged by openstacksdk)."""

        def run(c: Any) -> list[InventoryItem]:
            items: list[InventoryItem] = []
            mine: set[str] = set()
            for v in c.block_storage.volumes(details=True):
                meta = v.metadata or {}
                bid = meta.get(META_VOLUME)
                if bid and v.volume_type == self.cfg.type_name:
                    mine.add(v.id)
                    if quarantined(v):
                        continue
                    size = int(v.size) * GIB
                    users = tuple(sorted(str(a.get("attachment_id")) for a in v.attachments or []))
                    item = InventoryItem(
                        "volume",
                        bid,
                        size,
                        size,  # Cinder does not say how much is written
                        created_at=parse_time(v.created_at),
                        tenant=meta.get(META_TENANT),
                        users=users,
                        partial=v.status in ("creating", "error"),
                    )
                    items.append(item)
            for s in c.block_storage.snapshots(details=True):
                bid = (s.metadata or {}).get(META_SNAPSHOT)
                if bid and s.volume_id in mine and not quarantined(s):
                    size = int(s.size) * GIB
                    created = parse_time(s.created_at)
                    items.append(
                        InventoryItem("snapshot", bid, size, size, created_at=created, partial=s.status == "error")
                    )
            return items

        return await self.cloud.call("cinder inventory", run)

    # -- QoS ---------------------------------------------------------------------------

    async def set_type_qos(self, *, iops_per_gib: int | None, bytes_per_s_per_gib: int | None) -> str:
        """Cinder's own QoS for the whole type, scaled by size (`*_per_gb` keys, applied by
        the consumer: front-end = the hypervisor). Returns the spec's id."""
        name = f"berth-{self.cfg.type_name}"
        specs = {
            k: str(v)
            for k, v in (("total_iops_sec_per_gb", iops_per_gib), ("total_bytes_sec_per_gb", bytes_per_s_per_gib))
            if v is not None
        }

        def run(c: Any) -> str:
            bs = c.block_storage
            vtype = bs.find_type(self.cfg.type_name, ignore_missing=False)
            spec = bs.find_qos_spec(name, ignore_missing=True)
            if spec is not None:
                bs.disassociate_qos_spec(spec, vtype.id)
                bs.delete_qos_spec(spec, force=True)
            if not specs:
                return ""
            # openstacksdk 4.x takes the spec keys flat, not as `specs={...}` (400).
            spec = bs.create_qos_spec(name=name, consumer="front-end", **specs)
            bs.associate_qos_spec(spec, vtype.id)
            return str(spec.id)

        return await self.cloud.call(f"qos of type {self.cfg.type_name}", run)

    # -- attachments -------------------------------------------------------------------

    async def image_name(self, volume_id: str) -> str:
        vol = await self._require(volume_id)
        return f"volume-{vol.id}"

    def node_context(self, volume_id: str) -> dict[str, str]:
        raise Unsupported("cinder volumes are published through attach(), which makes a Cinder attachment")

    async def attach(self, volume_id: str, node_id: str, connector: dict[str, Any], mode: str = "rw") -> dict[str, str]:
        """Create (or find) the node's attachment with its connector and complete it;
        return the publish context from Cinder's connection info (no secrets)."""
        what = f"attach cinder volume {volume_id} to {node_id}"
        vol = await self._require(volume_id)
        if quarantined(vol):
            raise FailedPrecondition(f"volume {volume_id} is quarantined", reason="volume_quarantined")
        instance = node_instance(node_id)

        def run(c: Any) -> dict[str, Any]:
            bs = c.block_storage
            att = next((a for a in bs.attachments(volume_id=vol.id) if a.instance == instance), None)
            if att is None or not att.connection_info:
                if att is not None:
                    bs.delete_attachment(att, ignore_missing=True)
                att = bs.create_attachment(vol.id, connector=connector, instance=instance, mode=mode)
            if att.status != "attached":
                bs.complete_attachment(att)
            return {"attachment_id": att.id, **dict(att.connection_info or {})}

        info = await self.cloud.call(what, run)
        ctx = connection_context(info, vol.id)
        if self.cfg.ceph is not None:
            # As RbdBackend.node_context: the cluster's conf and the user convention, no secret.
            ctx.update({k: str(self.cfg.ceph[k]) for k in ("conf", "user", "mon_host") if k in self.cfg.ceph})
        return ctx

    async def _node_attachments(self, volume_id: str, node_id: str) -> list[Any]:
        vol = await self._volume(volume_id)
        if vol is None:
            return []
        instance = node_instance(node_id)
        return await self.cloud.call(
            f"attachments of {volume_id}",
            lambda c: [a for a in c.block_storage.attachments(volume_id=vol.id) if a.instance == instance],
        )

    async def detach(self, volume_id: str, node_id: str) -> None:
        """Delete the node's attachments of the volume; none left is success."""
        for att in await self._node_attachments(volume_id, node_id):

            def delete(c: Any, a: Any = att) -> None:
                c.block_storage.delete_attachment(a, ignore_missing=True)

            await self.cloud.call(f"detach {volume_id} from {node_id}", delete)

    async def attached_nodes(self, volume_id: str) -> list[str]:
        """Cinder attachment ids of the volume (for tests and the fence record)."""
        vol = await self._require(volume_id)
        return await self.cloud.call(
            "attachments", lambda c: sorted(a.id for a in c.block_storage.attachments(volume_id=vol.id))
        )

    # -- fencing -----------------------------------------------------------------------

    async def fence(self, target: FenceTarget) -> list[str]:
        """Force-detach the node's Cinder attachments (Cinder stops exporting to it), then,
        for an RBD type, blocklist its client addresses at Ceph (the storage refuses its I/O
        even if it still holds the image open)."""
        cut: list[str] = []
        images: list[str] = []
        for volume_id in target.volume_ids:
            vol = await self._volume(volume_id)
            if vol is None:
                continue
            images.append(f"volume-{vol.id}")
            for att in await self._node_attachments(volume_id, target.node_id):

                def detach(c: Any, v: Any = vol, a: Any = att) -> None:
                    _force_detach(c, v, a)

                await self.cloud.call(f"force-detach {volume_id}", detach)
                cut.append(f"cinder-detach {volume_id} {att.id}")
        if self.cfg.ceph is not None:
            rbd_target = FenceTarget(target.node_id, tuple(images), target.client_addresses)
            cut += await self._ceph().fence(rbd_target)
        return cut

    async def unfence(self, target: FenceTarget) -> list[str]:
        if self.cfg.ceph is None:
            return []
        images = []
        for volume_id in target.volume_ids:
            vol = await self._volume(volume_id)
            if vol is not None:
                images.append(f"volume-{vol.id}")
        return list(await self._ceph().unfence(FenceTarget(target.node_id, tuple(images), target.client_addresses)))


def _force_detach(c: Any, vol: Any, att: Any) -> None:
    """Cinder's admin `os-force_detach` for the attachment, then the attachment record."""
    from openstack import exceptions

    try:
        c.block_storage.post(
            f"/volumes/{vol.id}/action",
            json={"os-force_detach": {"attachment_id": att.id}},
            microversion=MICROVERSION,
        ).raise_for_status()
    except exceptions.HttpException as exc:
        if getattr(exc, "status_code", None) != 404:
            raise
    c.block_storage.delete_attachment(att, ignore_missing=True)


def connection_context(info: dict[str, Any], cinder_id: str) -> dict[str, str]:
    """A publish context from Cinder's connection info. For RBD: the pool and image the
    node's rbd-fuse opens with its own cephx id; the keyring Cinder may include, the
    secret uuid and Cinder's own user stay out (the context is stored and logged)."""
    # The attachments API returns the driver's data flat; the old os-initialize_connection
    # nested it under "data".
    data = info.get("data") or info
    ctx = {"cinder_id": cinder_id, "attachment_id": str(info.get("attachment_id", ""))}
    driver = str(info.get("driver_volume_type", ""))
    ctx["driver"] = driver
    if driver == "rbd":
        pool, _, image = str(data.get("name", "")).partition("/")
        hosts, ports = data.get("hosts") or [], data.get("ports") or []
        ctx.update(pool=pool, image=image)
        if hosts:
            ctx["mon_host"] = ",".join(f"{h}:{p}" for h, p in zip(hosts, ports, strict=False))
    return ctx

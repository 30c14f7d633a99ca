"""The CephFS backend: shared volumes as subvolumes, through the mgr `volumes` module
(`fs subvolume ...` sent with librados `mgr_command`) and MDS commands through libcephfs.

- one subvolume group per tenant (`<group_prefix><tenant>`, default group for none);
- a volume is the subvolume named by its Berth id, its quota the volume size;
- a snapshot is a subvolume snapshot named by its Berth id; the mon config-key store maps
  its id to (group, subvolume), because the interface names snapshots alone;
- access is per node (or tenant): a cephx id authorised on the subvolume's path;
- fencing evicts the node's MDS sessions, then blocklists their addresses.

Production cluster (config: conf or mon_host, keyring, user, fs_name, optional data_pool):
    ceph auth get-or-create client.berth mgr 'allow rw' mds 'allow *' \
        mon 'allow r, allow command "osd blocklist", allow command "config-key set",
             allow command "config-key get", allow command "config-key rm", allow command "auth get-key"'
(`auth get-key` only to hand the per-node key back from `authorize`; `mds 'allow *'` for
`client ls` / `client evict`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from berth_shared.backends import ceph_bindings
from berth_shared.backends.base import BackendError, Capacity, FenceTarget, InventoryItem
from berth_shared.backends.ceph_common import (
    Blocklist,
    CephConfig,
    CephConnection,
    ConfigKeyIndex,
    addr_matches,
    normalize_addr,
    opt_int,
    parse_common,
    pool_name,
)
from berth_shared.backends.cephfs_watch import QUARANTINE, CephFsWatchOps, parse_time
from berth_shared.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound

T = TypeVar("T")

CLONE_SNAP = "berth-clone-"
NODE_CLIENT_PREFIX = "berth-node-"  # + node id: the cephx id Berth authorises for a node
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
# Every Berth tenant name (TENANT_NAME_PATTERN, up to 64 characters, may start with "_"):
# the group name is prefixed, so it never starts with one of the volumes module's "_" names.
_TENANT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")


def _check_id(value: str) -> str:
    if not _ID.match(value):
        raise InvalidArgument(f"invalid backend object id {value!r}", reason="invalid_id")
    return value


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise InvalidArgument(f"invalid {what} {value!r}", reason="invalid_id")
    return value


@dataclass(frozen=True)
class CephFsConfig:
    ceph: CephConfig
    fs_name: str
    group_prefix: str
    default_group: str
    data_pool: str | None
    clone_timeout_s: int


def validate_cephfs_config(config: dict[str, Any]) -> tuple[CephFsConfig, dict[str, Any]]:
    ceph, norm = parse_common("cephfs", config)
    fs_name = config.get("fs_name", "cephfs")
    if not isinstance(fs_name, str) or not _NAME.match(fs_name):
        raise InvalidArgument(
            "cephfs backend config: 'fs_name' must be a file system name", reason="invalid_backend_config"
        )
    prefix = config.get("group_prefix", "berth-")
    if not isinstance(prefix, str) or not re.match(r"^[A-Za-z0-9_.\-]{1,32}$", prefix):
        raise InvalidArgument(
            "cephfs backend config: 'group_prefix' must be 1-32 of [A-Za-z0-9_.-]", reason="invalid_backend_config"
        )
    default_group = config.get("default_group", prefix + "default")
    if not isinstance(default_group, str) or not _NAME.match(default_group):
        raise InvalidArgument(
            "cephfs backend config: 'default_group' must be a group name", reason="invalid_backend_config"
        )
    data_pool = pool_name("cephfs", config, "data_pool", required=False)
    clone_timeout = opt_int("cephfs", config, "clone_timeout_s", 600, 1, 24 * 3600)
    norm.update(fs_name=fs_name, group_prefix=prefix, default_group=default_group, clone_timeout_s=clone_timeout)
    if data_pool:
        norm["data_pool"] = data_pool
    return CephFsConfig(ceph, fs_name, prefix, default_group, data_pool, clone_timeout), norm


@dataclass(frozen=True)
class CephFsClient:
    """One MDS session: a mounted client."""

    id: int
    rank: int
    address: str
    entity_id: str
    hostname: str
    root: str


class CephFsBackend(CephFsWatchOps):
    kind = "cephfs"

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg, self.config = validate_cephfs_config(config)
        self.conn = CephConnection(self.cfg.ceph)
        self.index = ConfigKeyIndex(self.conn, f"berth/cephfs/{self.cfg.fs_name}")
        self.blocklist = Blocklist(self.conn)
        # Caches (the cluster is the truth): volume id -> group, volume id -> path.
        self._groups: dict[str, str] = {}
        self._paths: dict[str, str] = {}
        self._fs: Any = None
        self._fs_lock = threading.Lock()

    async def close(self) -> None:
        def shut() -> None:
            with self._fs_lock:
                if self._fs is not None:
                    with contextlib.suppress(Exception):  # closing anyway
                        self._fs.shutdown()
                    self._fs = None
            self.conn.close()

        await asyncio.to_thread(shut)

    # -- plumbing ----------------------------------------------------------------------

    async def _do(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def _mgr(self, prefix: str, *, ok: Sequence[int] = (), **args: Any) -> Any:
        return self.conn.mgr({"prefix": prefix, "vol_name": self.cfg.fs_name, **args}, ok=ok)

    def group_for(self, tenant: str | None) -> str:
        if tenant is None:
            return self.cfg.default_group
        if not _TENANT.match(tenant):
            raise InvalidArgument(f"invalid tenant {tenant!r}", reason="invalid_id")
        return self.cfg.group_prefix + tenant

    def _groups_all(self) -> list[str]:
        out = self._mgr("fs subvolumegroup ls") or []
        return [
            str(g["name"])
            for g in out
            if str(g["name"]).startswith(self.cfg.group_prefix) or g["name"] == self.cfg.default_group
        ]

    def _info(self, volume_id: str, group: str) -> dict[str, Any] | None:
        try:
            return dict(self._mgr("fs subvolume info", sub_name=volume_id, group_name=group))
        except NotFound:
            return None

    def _locate(self, volume_id: str) -> tuple[str, dict[str, Any]] | None:
        """(group, info) of a volume, or None. Groups are per tenant: few, so a scan is cheap."""
        cached = self._groups.get(volume_id)
        for group in ([cached] if cached else []) + self._groups_all():
            info = self._info(volume_id, group)
            if info is not None:
                self._groups[volume_id] = group
                if "path" in info:
                    self._paths[volume_id] = str(info["path"])
                return group, info
        self._groups.pop(volume_id, None)
        self._paths.pop(volume_id, None)
        return None

    def _require(self, volume_id: str) -> tuple[str, dict[str, Any]]:
        found = self._locate(volume_id)
        if found is None:
            raise NotFound(f"cephfs subvolume {volume_id} not found in {self.cfg.fs_name}")
        if found[1].get("state") == "snapshot-retained":
            raise NotFound(f"cephfs volume {volume_id} was deleted (only its snapshots remain)")
        return found

    # -- volumes -----------------------------------------------------------------------

    async def create_volume(self, volume_id: str, size_bytes: int, *, tenant: str | None = None) -> None:
        _check_id(volume_id)
        group = self.group_for(tenant)
        await self._do(self._create_sync, volume_id, size_bytes, group)

    def _create_sync(self, volume_id: str, size_bytes: int, group: str) -> None:
        found = self._locate(volume_id)
        if found is not None:
            self._adopt(volume_id, size_bytes, *found)
            return
        self._mgr("fs subvolumegroup create", group_name=group)
        args: dict[str, Any] = {"sub_name": volume_id, "group_name": group, "size": size_bytes, "mode": "0777"}
        if self.cfg.data_pool:
            args["pool_layout"] = self.cfg.data_pool
        # One mgr call: the subvolume exists complete with its quota, or not at all.
        self._mgr("fs subvolume create", **args)
        self._groups[volume_id] = group

    def _adopt(self, volume_id: str, size_bytes: int, group: str, info: dict[str, Any]) -> None:
        quota = info.get("bytes_quota")
        current = int(quota) if isinstance(quota, int) else 0
        if current > size_bytes:
            raise FailedPrecondition(f"cephfs volume {volume_id} exists with a larger quota {current}")
        if current < size_bytes:
            self._mgr(
                "fs subvolume resize", sub_name=volume_id, group_name=group, new_size=str(size_bytes), no_shrink=True
            )

    async def delete_volume(self, volume_id: str) -> None:
        _check_id(volume_id)

        def run() -> None:
            found = self._locate(volume_id)
            if found is None or found[1].get("state") == "snapshot-retained":
                return
            group, info = found
            users = [c for c in self._clients() if c.root.startswith(str(info.get("path", "/-")))]
            if users:
                raise FailedPrecondition(
                    f"volume {volume_id} is in use by {len(users)} client(s): "
                    + ", ".join(f"{c.entity_id}@{c.address}" for c in users),
                    reason="volume_in_use",
                    clients=[c.address for c in users],
                )
            snaps = self._mgr("fs subvolume snapshot ls", sub_name=volume_id, group_name=group) or []
            # Snapshots outlive their volume: keep them, the subvolume goes when the last does.
            self._mgr("fs subvolume rm", sub_name=volume_id, group_name=group, force=True, retain_snapshots=bool(snaps))
            self._paths.pop(volume_id, None)

        await self._do(run)

    async def expand_volume(self, volume_id: str, size_bytes: int) -> None:
        _check_id(volume_id)

        def run() -> None:
            group, info = self._require(volume_id)
            quota = info.get("bytes_quota")
            if not isinstance(quota, int) or quota < size_bytes:  # "infinite" or smaller: set it
                self._mgr(
                    "fs subvolume resize",
                    sub_name=volume_id,
                    group_name=group,
                    new_size=str(size_bytes),
                    no_shrink=True,
                )

        await self._do(run)

    async def volume_path(self, volume_id: str) -> str:
        """The subvolume's path inside the file system: what a node mounts."""
        _check_id(volume_id)
        return str((await self._do(self._require, volume_id))[1]["path"])

    # -- snapshots and clones ----------------------------------------------------------

    async def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        _check_id(snapshot_id)
        _check_id(volume_id)

        def run() -> None:
            group, _ = self._require(volume_id)
            entry = self.index.get("snapshot/" + snapshot_id)
            if entry is not None and entry["volume_id"] != volume_id:
                raise FailedPrecondition(f"snapshot {snapshot_id} already exists on another volume")
            if entry is None:  # index first, so a snapshot is never unfindable
                self.index.set("snapshot/" + snapshot_id, {"volume_id": volume_id, "group": group})
            self._mgr("fs subvolume snapshot create", sub_name=volume_id, group_name=group, snap_name=snapshot_id)

        await self._do(run)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        _check_id(snapshot_id)

        def run() -> None:
            entry = self.index.get("snapshot/" + snapshot_id)
            if entry is None:
                return
            try:
                self._mgr(
                    "fs subvolume snapshot rm",
                    sub_name=entry["volume_id"],
                    group_name=entry["group"],
                    snap_name=snapshot_id,
                    force=True,
                )
            except BackendError as exc:
                if "pending clones" in exc.detail or "EAGAIN" in exc.detail:
                    raise Aborted(f"snapshot {snapshot_id} has clones in progress; retry later") from exc
                raise
            self.index.remove("snapshot/" + snapshot_id)

        await self._do(run)

    async def create_volume_from_snapshot(
        self, volume_id: str, snapshot_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        _check_id(volume_id)
        _check_id(snapshot_id)

        def run() -> None:
            entry = self.index.get("snapshot/" + snapshot_id)
            if entry is None:
                raise NotFound(f"snapshot {snapshot_id} not found")
            target = self.group_for(tenant) if tenant else str(entry["group"])
            self._clone_sync(str(entry["volume_id"]), str(entry["group"]), snapshot_id, volume_id, target, size_bytes)

        await self._do(run)

    async def clone_volume(
        self, volume_id: str, source_volume_id: str, size_bytes: int, *, tenant: str | None = None
    ) -> None:
        _check_id(volume_id)
        _check_id(source_volume_id)

        def run() -> None:
            group, _ = self._require(source_volume_id)
            snap = CLONE_SNAP + volume_id
            if self._locate(volume_id) is None:
                self._mgr("fs subvolume snapshot create", sub_name=source_volume_id, group_name=group, snap_name=snap)
            target = self.group_for(tenant) if tenant else group
            self._clone_sync(source_volume_id, group, snap, volume_id, target, size_bytes)
            # The clone is a full copy: the hidden snapshot is no longer needed.
            self._mgr(
                "fs subvolume snapshot rm", sub_name=source_volume_id, group_name=group, snap_name=snap, force=True
            )

        await self._do(run)

    def _clone_sync(self, src: str, src_group: str, snap: str, volume_id: str, group: str, size_bytes: int) -> None:
        """Start (or find) the mgr's asynchronous clone and wait for it; a clone that outlives
        the timeout answers Aborted so the caller's retry finds it in progress."""
        if self._locate(volume_id) is None:
            self._mgr("fs subvolumegroup create", group_name=group)
            args: dict[str, Any] = {
                "sub_name": src,
                "group_name": src_group,
                "snap_name": snap,
                "target_sub_name": volume_id,
                "target_group_name": group,
            }
            if self.cfg.data_pool:
                args["pool_layout"] = self.cfg.data_pool
            self._mgr("fs subvolume snapshot clone", **args)
        deadline = time.monotonic() + self.cfg.clone_timeout_s
        delay = 0.1
        while True:
            status = self._mgr("fs clone status", clone_name=volume_id, group_name=group)
            state = str(status["status"]["state"])
            if state == "complete":
                break
            if state in ("failed", "canceled"):
                failure = status["status"].get("failure", {})
                raise BackendError(f"cephfs clone of {src}@{snap} to {volume_id} {state}: {failure}")
            if time.monotonic() > deadline:
                raise Aborted(f"cephfs clone to {volume_id} still {state}; retry later")
            time.sleep(delay)
            delay = min(1.0, delay * 1.5)
        self._groups[volume_id] = group
        info = self._info(volume_id, group) or {}
        self._adopt(volume_id, size_bytes, group, info)

    # -- access ------------------------------------------------------------------------

    @staticmethod
    def node_client_id(node_id: str) -> str:
        """The cephx id Berth authorises for a node: `client.berth-node-<node id>`."""
        return NODE_CLIENT_PREFIX + _check_name(node_id, "node id")

    async def authorize(
        self, volume_id: str, client_id: str, access: Literal["rw", "r"] = "rw", *, tenant: str | None = None
    ) -> str | None:
        """Give `client.<client_id>` access to the volume's path; return its secret key
        (None when this user may not read keys: the operator hands keys out then)."""
        _check_id(volume_id)
        _check_name(client_id, "client id")

        def run() -> str | None:
            group, _ = self._require(volume_id)
            args: dict[str, Any] = {
                "sub_name": volume_id,
                "group_name": group,
                "auth_id": client_id,
                "access_level": access,
            }
            if tenant:
                args["tenant_id"] = tenant
            self._mgr("fs subvolume authorize", **args)
            try:
                key = self.conn.mon({"prefix": "auth get-key", "entity": "client." + client_id})
            except BackendError:
                return None
            except Exception:
                return None
            return str(key["key"]) if isinstance(key, dict) else None

        return await self._do(run)

    async def deauthorize(self, volume_id: str, client_id: str) -> None:
        _check_id(volume_id)
        _check_name(client_id, "client id")

        def run() -> None:
            found = self._locate(volume_id)
            if found is None:
                return
            self._mgr(
                "fs subvolume deauthorize",
                sub_name=volume_id,
                group_name=found[0],
                auth_id=client_id,
                ok=(errno.ENOENT,),
            )

        await self._do(run)

    # -- clients -----------------------------------------------------------------------

    def _mds(self) -> Any:
        with self._fs_lock:
            if self._fs is None:
                cephfs = ceph_bindings.cephfs()
                fs = cephfs.LibCephFS(rados_inst=self.conn.client())
                fs.init()  # enough for MDS commands; no mount needed
                self._fs = fs
            return self._fs

    def _active_ranks(self) -> list[int]:
        dump = self.conn.mon({"prefix": "fs dump"})
        for fs in dump.get("filesystems", []):
            mdsmap = fs.get("mdsmap", {})
            if mdsmap.get("fs_name") == self.cfg.fs_name:
                return sorted(int(i["rank"]) for i in mdsmap.get("info", {}).values() if i.get("state") == "up:active")
        raise NotFound(f"file system {self.cfg.fs_name} not found")

    def _mds_command(self, rank: int, cmd: dict[str, Any]) -> Any:
        spec = f"{self.cfg.fs_name}:{rank}"
        for attempt in (1, 2):
            try:
                ret, out, outs = self._mds().mds_command(spec, json.dumps({"format": "json", **cmd}), b"")
            except Exception as exc:
                if attempt == 1:  # the libcephfs handle may be stale (MDS failover): renew it
                    with self._fs_lock:
                        self._fs = None
                    continue
                raise BackendError(f"mds {spec} {cmd['prefix']}: {exc}") from exc
            if int(ret) != 0:
                raise BackendError(f"mds {spec} {cmd['prefix']} failed ({ret}): {outs}")
            return json.loads(out) if out else None
        raise AssertionError("unreachable")  # pragma: no cover

    def _clients(self) -> list[CephFsClient]:
        clients: list[CephFsClient] = []
        for rank in self._active_ranks():
            for s in self._mds_command(rank, {"prefix": "client ls"}) or []:
                meta = s.get("client_metadata", {})
                inst = str(s.get("inst", ""))
                clients.append(
                    CephFsClient(
                        id=int(s["id"]),
                        rank=rank,
                        address=inst.split(" ", 1)[1] if " " in inst else inst,
                        entity_id=str(meta.get("entity_id", "")),
                        hostname=str(meta.get("hostname", "")),
                        root=str(meta.get("root", "/")),
                    )
                )
        return clients

    async def clients(self) -> list[CephFsClient]:
        return await self._do(self._clients)

    async def evict(self, client_ids: Sequence[int]) -> None:
        """Evict sessions by id on every active rank (evicting also blocklists them, by
        the MDS default `mds_session_blocklist_on_evict`)."""

        def run() -> None:
            for rank in self._active_ranks():
                for cid in client_ids:
                    self._mds_command(rank, {"prefix": "client evict", "filters": [f"id={int(cid)}"]})

        await self._do(run)

    async def record_node_address(self, volume_id: str, node_id: str, client_address: str) -> None:
        """Called by the node after mounting: which address `node_id` uses (fence input)."""
        _check_name(node_id, "node id")
        addr = normalize_addr(client_address)

        def run() -> None:
            entry = self.index.get("node/" + node_id) or {"addresses": {}}
            entry["addresses"][volume_id] = addr
            self.index.set("node/" + node_id, entry)

        await self._do(run)

    def node_context(self, volume_id: str) -> dict[str, str]:
        """What a node needs to mount (CSI publish context): the file system, the
        subvolume's path and the cephx id Berth authorises per node (`client_id_prefix` +
        node id). The path needs one mgr lookup, cached; the attacher calls this once per
        publish."""
        _check_id(volume_id)
        path = self._paths.get(volume_id)
        if path is None:
            path = str(self._require(volume_id)[1]["path"])
            self._paths[volume_id] = path
        ctx = {"fs_name": self.cfg.fs_name, "path": path, "client_id_prefix": NODE_CLIENT_PREFIX}
        if self.cfg.ceph.mon_host:
            ctx["mon_host"] = self.cfg.ceph.mon_host
        if self.cfg.ceph.conf:
            ctx["conf"] = self.cfg.ceph.conf
        return ctx

    async def fence(self, target: FenceTarget) -> list[str]:
        """Evict every MDS session of the node (its per-node cephx id, and sessions at its
        known addresses), then blocklist their addresses until unfence. Idempotent;
        returns what was cut (`evict <session>`, `blocklist <addr>`)."""
        node_id = _check_name(target.node_id, "node id")
        node_client = self.node_client_id(node_id)

        def run() -> list[str]:
            recorded = set((self.index.get("node/" + node_id) or {}).get("addresses", {}).values())
            previous = self.index.get("fence/" + node_id) or {}
            given = {normalize_addr(a) for a in target.client_addresses}
            known = given | recorded | set(previous.get("addresses", []))
            sessions = [
                c for c in self._clients() if c.entity_id == node_client or (known and addr_matches(c.address, known))
            ]
            addrs = sorted(known | {normalize_addr(c.address) for c in sessions})
            self.index.set("fence/" + node_id, {"addresses": addrs})  # before acting: unfence needs it
            cut = []
            for c in sessions:
                self._mds_command(c.rank, {"prefix": "client evict", "filters": [f"id={c.id}"]})
                cut.append(f"evict client.{c.id} {c.address}")
            for addr in addrs:
                self.blocklist.add(addr, self.cfg.ceph.fence_expire_s)
                cut.append(f"blocklist {addr}")
            if addrs:
                self.blocklist.wait_enforced(self.blocklist.osdmap_epoch())
            return cut

        return await self._do(run)

    async def unfence(self, target: FenceTarget) -> list[str]:
        node_id = _check_name(target.node_id, "node id")

        def run() -> list[str]:
            record = self.index.get("fence/" + node_id) or {}
            addrs = set(record.get("addresses", [])) | {normalize_addr(a) for a in target.client_addresses}
            for addr in sorted(addrs):
                self.blocklist.remove(addr)
            self.index.remove("node/" + node_id)
            self.index.remove("fence/" + node_id)
            return [f"blocklist {a}" for a in sorted(addrs)]

        return await self._do(run)

    async def blocklist_entries(self) -> list[str]:
        return await asyncio.to_thread(self.blocklist.entries)

    # -- accounting --------------------------------------------------------------------

    async def inventory(self) -> list[InventoryItem]:
        def run() -> list[InventoryItem]:
            quarantined = set(self.index.keys(QUARANTINE))
            clients = self._clients()
            items: list[InventoryItem] = []
            for group in self._groups_all():
                tenant = group[len(self.cfg.group_prefix) :] if group != self.cfg.default_group else None
                for sub in self._mgr("fs subvolume ls", group_name=group) or []:
                    name = str(sub["name"])
                    info = self._info(name, group)
                    if info is None or name in quarantined:
                        continue
                    if info.get("state") != "snapshot-retained":
                        quota = info.get("bytes_quota")
                        path = str(info.get("path", "/-"))
                        items.append(
                            InventoryItem(
                                "volume",
                                name,
                                int(quota) if isinstance(quota, int) else 0,
                                int(info.get("bytes_used", 0)),
                                created_at=parse_time(info.get("created_at")),
                                tenant=tenant,
                                users=tuple(sorted(c.address for c in clients if c.root.startswith(path))),
                            )
                        )
                    for snap in self._mgr("fs subvolume snapshot ls", sub_name=name, group_name=group) or []:
                        if not str(snap["name"]).startswith(CLONE_SNAP):
                            items.append(InventoryItem("snapshot", str(snap["name"]), 0, 0, tenant=tenant))
            return items

        return await self._do(run)

    async def capacity(self) -> Capacity:
        def run() -> Capacity:
            pool = self.cfg.data_pool or self._data_pool()
            for p in (self.conn.mon({"prefix": "df"}) or {}).get("pools", []):
                if p.get("name") == pool:
                    free = int(p["stats"]["max_avail"])
                    return Capacity(total_bytes=int(p["stats"]["stored"]) + free, free_bytes=free)
            raise NotFound(f"pool {pool} not found in the cluster's df")

        return await self._do(run)

    def _data_pool(self) -> str:
        for fs in self.conn.mon({"prefix": "fs ls"}) or []:
            if fs.get("name") == self.cfg.fs_name:
                return str(fs["data_pools"][0])
        raise NotFound(f"file system {self.cfg.fs_name} not found")

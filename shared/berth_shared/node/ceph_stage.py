"""Staging Ceph volumes (`rbd` and `cephfs` publish contexts, from `RbdBackend.node_context`
and `CephFsBackend.node_context`): attach the image as a block device and mount its file
system, or mount the subvolume; and tell the Ceph client address it uses, because a fence
blocklists addresses, not node names.

The node talks to Ceph with its own cephx identity (`CephClientSpec`), never with the
provisioner's: the context carries no secret. Without one given, the Ceph conventions
apply: the context's conf (else /etc/ceph/ceph.conf), the context's `user` for RBD and
`client.berth-node-<node id>` for CephFS, with the keyring in
/etc/ceph/ceph.client.<user>.keyring.

For RBD the address is also written on the image (`berth.node.<node>.addr`, through
`RbdBackend.record_node_address`) *before* the first write: if the node dies before its
next heartbeat reaches the attacher, the fence still finds what to blocklist. A staging
whose address cannot be told or recorded is undone and fails: a writer that a fence could
not cut off would break the single-writer promise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from berth_shared.errors import FailedPrecondition, InvalidArgument
from berth_shared.node import ceph as node_ceph
from berth_shared.node import host, mounts
from berth_shared.node.ceph import AttachError, CephClientSpec
from berth_shared.node.staging import CephHandle, Staged, StageRequest

log = logging.getLogger(__name__)

CephKind = Literal["rbd", "cephfs"]
KINDS: tuple[CephKind, ...] = ("rbd", "cephfs")
NODE_CLIENT_PREFIX = "berth-node-"  # as CephFsBackend.node_client_id
DEFAULT_FS = "ext4"


def _ctx(ctx: Mapping[str, str], key: str) -> str:
    value = ctx.get(key)
    if not value:
        raise InvalidArgument(f"publish context lacks {key!r}", reason="invalid_publish_context", field=key)
    return value


def client_spec(kind: CephKind, ctx: Mapping[str, str], node_id: str, given: CephClientSpec | None) -> CephClientSpec:
    """The cephx identity this node uses for a volume of `kind` (see the module docstring)."""
    if given is not None:
        return given
    conf = ctx.get("conf") or "/etc/ceph/ceph.conf"
    user = _ctx(ctx, "user") if kind == "rbd" else ctx.get("client_id_prefix", NODE_CLIENT_PREFIX) + node_id
    return CephClientSpec(conf, f"/etc/ceph/ceph.client.{user}.keyring", user)


# -- RBD -----------------------------------------------------------------------------------


async def _address_record(spec: CephClientSpec, pool: str, image: str, node_id: str, addr: str | None) -> None:
    """Record this node's client address on the image (`addr`), or forget it (None)."""
    from berth_shared.backends.rbd import RbdBackend

    backend = RbdBackend({"conf": spec.conf, "keyring": spec.keyring, "user": spec.user, "pool": pool})
    try:
        if addr is None:
            await backend.forget_node_address(image, node_id)
        else:
            await backend.record_node_address(image, node_id, addr)
    finally:
        await backend.close()


class RbdStager:
    def source(self, context: Mapping[str, str]) -> str:
        return f"{_ctx(context, 'pool')}/{_ctx(context, 'image')}"

    async def stage(self, req: StageRequest) -> Staged:
        ctx = req.context
        pool, image = _ctx(ctx, "pool"), _ctx(ctx, "image")
        spec = client_spec("rbd", ctx, req.node_id, req.identity)
        att = await asyncio.to_thread(node_ceph.attach_rbd, spec, pool, image, req.workdir, read_only=req.readonly)
        staged = Staged(
            volume_id=req.volume_id,
            backend="rbd",
            source=f"{pool}/{image}",
            device=att.device,
            readonly=req.readonly,
            client_address=att.client_address,
            ceph=CephHandle(identity=spec, rbd=att),
        )
        try:
            if req.on_device is not None:
                req.on_device(att.device)
            if not att.client_address:
                raise AttachError(
                    f"attached {pool}/{image} with {att.method} but cannot tell its Ceph client address: "
                    "a fence of this node could not cut it off"
                )
            await _address_record(spec, pool, image, req.node_id, att.client_address)
            if req.target is not None:
                fstype = req.fstype or await asyncio.to_thread(host.filesystem_of, att.device) or DEFAULT_FS
                options = list(req.mount_options)
                await asyncio.to_thread(
                    host.mount_device, att.device, req.target, fstype, readonly=req.readonly, options=options
                )
                staged = staged.model_copy(update={"mount": req.target, "fs_type": fstype, "mount_options": options})
        except BaseException:
            await asyncio.to_thread(node_ceph.detach_rbd, att, req.target)
            raise
        return staged

    async def unstage(self, staged: Staged, *, fenced: bool, node_id: str) -> None:
        """Unmount, detach; after a clean unstage the node's address record on the image goes
        too (a fenced node's stays, for the unfence to lift)."""
        att = staged.ceph.rbd if staged.ceph else None
        if att is None:
            if staged.mount:
                await asyncio.to_thread(node_ceph.unmount, staged.mount, fenced=fenced)
            return
        await asyncio.to_thread(node_ceph.detach_rbd, att, staged.mount, fenced=fenced)
        if not fenced and staged.ceph is not None:
            try:
                await _address_record(staged.ceph.identity, att.pool, att.image, node_id, None)
            except Exception as exc:  # a stale record only makes a later fence blocklist a dead address
                log.warning("could not forget %s's address on %s: %s", node_id, att.image, exc)

    async def expand(self, staged: Staged, *, in_use: bool) -> None:
        def grow() -> None:
            if staged.device is None:
                return
            if host.loop(staged.device) is not None:  # rbd-fuse + loop; krbd and nbd resize by themselves
                host.refresh_loop(staged.device)
            if staged.mount and staged.fs_type:
                host.grow_filesystem(
                    staged.device, staged.mount, staged.fs_type, in_use=in_use, options=staged.mount_options
                )

        await asyncio.to_thread(grow)

    def is_staged(self, staged: Staged) -> bool:
        if staged.mount is not None:
            return mounts.is_mounted(staged.mount)
        att = staged.ceph.rbd if staged.ceph else None
        return att is not None and (att.fuse_dir is None or mounts.is_mounted(att.fuse_dir))


class CinderStager(RbdStager):
    """A Cinder volume's publish context (`CinderBackend.attach`): the connection info's
    driver says how to reach it; RBD is staged exactly as Berth's own RBD volumes."""

    @staticmethod
    def _rbd_only(context: Mapping[str, str]) -> None:
        driver = context.get("driver")
        if driver != "rbd":
            raise InvalidArgument(
                f"Cinder connection of driver {driver!r}: this node stages Cinder volumes over rbd only",
                reason="backend_unsupported",
                field="publish_context.driver",
            )

    def source(self, context: Mapping[str, str]) -> str:
        self._rbd_only(context)
        return super().source(context)

    async def stage(self, req: StageRequest) -> Staged:
        self._rbd_only(req.context)
        return await super().stage(req)


# -- CephFS --------------------------------------------------------------------------------


class CephFsStager:
    def source(self, context: Mapping[str, str]) -> str:
        return _ctx(context, "path")

    async def stage(self, req: StageRequest) -> Staged:
        if req.readonly:
            raise FailedPrecondition(
                "readonly CephFS mounts are not supported by this node yet", reason="readonly_cephfs"
            )
        if req.target is None:
            raise InvalidArgument("a CephFS volume has no block device: use mount access", reason="block_cephfs")
        path = self.source(req.context)
        spec = client_spec("cephfs", req.context, req.node_id, req.identity)
        m = await asyncio.to_thread(
            node_ceph.mount_cephfs,
            spec,
            path,
            Path(req.target),
            workdir=req.workdir,
            fs_name=req.context.get("fs_name"),
        )
        if m.client_address is None:
            # The kernel client does not tell its address; the fence still evicts every session
            # of the node's own cephx id (client.berth-node-<node>), which is why nodes use one.
            log.info("mounted %s with the %s client; its address is unknown, fences go by cephx id", path, m.method)
        return Staged(
            volume_id=req.volume_id,
            backend="cephfs",
            source=path,
            mount=req.target,
            fs_type="ceph",
            client_address=m.client_address,
            ceph=CephHandle(identity=spec, fs=m),
        )

    async def unstage(self, staged: Staged, *, fenced: bool, node_id: str) -> None:
        fs = staged.ceph.fs if staged.ceph else None
        if fs is not None:
            await asyncio.to_thread(node_ceph.unmount_cephfs, fs, fenced=fenced)
        elif staged.mount:
            await asyncio.to_thread(node_ceph.unmount, staged.mount, fenced=fenced)

    async def expand(self, staged: Staged, *, in_use: bool) -> None:
        return None  # a subvolume quota: nothing to grow on the node

    def is_staged(self, staged: Staged) -> bool:
        return staged.mount is not None and mounts.is_mounted(staged.mount)


# -- the calls of the attacher's node agent, until it stages through `staging` too -----------

CephStaged = Staged


def ceph_kind(backend: str) -> CephKind | None:
    """The publish context's `backend` as a Ceph kind, or None for any other backend."""
    return "rbd" if backend == "rbd" else "cephfs" if backend == "cephfs" else None


async def stage(
    kind: CephKind,
    ctx: dict[str, str],
    spec: CephClientSpec,
    *,
    node_id: str,
    volume_id: str,
    mount: str,
    workdir: Path,
    readonly: bool = False,
) -> Staged:
    req = StageRequest(volume_id, ctx, node_id, mount, workdir, readonly=readonly, identity=spec)
    return await (RbdStager() if kind == "rbd" else CephFsStager()).stage(req)


async def unstage(staged: Staged, *, fenced: bool = False, node_id: str | None = None) -> None:
    stager = RbdStager() if staged.backend == "rbd" else CephFsStager()
    await stager.unstage(staged, fenced=fenced, node_id=node_id or "")

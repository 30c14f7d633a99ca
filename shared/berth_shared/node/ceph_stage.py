"""Stage a Ceph volume on this node from its publish context, and unstage it.

What a node does with an `rbd` or `cephfs` publish context (`RbdBackend.node_context`,
`CephFsBackend.node_context`, plus `backend` set by the attacher): attach the image as a
block device and mount its file system, or mount the subvolume; and report the Ceph client
address it uses, because a fence blocklists addresses, not node names. Used by the node
agent; written so the CSI node plugin can use the same calls.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from berth_shared.errors import FailedPrecondition, InvalidArgument
from berth_shared.node import ceph as node_ceph
from berth_shared.node.ceph import AttachError, CephClientSpec, CephFsMount, RbdAttachment

log = logging.getLogger(__name__)

CephKind = Literal["rbd", "cephfs"]
KINDS: tuple[CephKind, ...] = ("rbd", "cephfs")
NODE_CLIENT_PREFIX = "berth-node-"  # as CephFsBackend.node_client_id


@dataclass
class CephStaged:
    """One staged Ceph volume: what to report in heartbeats and what unstaging needs."""

    kind: CephKind
    volume_id: str
    mount: str
    device: str | None
    client_address: str | None
    spec: CephClientSpec
    rbd: RbdAttachment | None = None
    fs: CephFsMount | None = None


def ceph_kind(backend: str) -> CephKind | None:
    """The publish context's `backend` as a Ceph kind, or None for any other backend."""
    if backend == "rbd":
        return "rbd"
    if backend == "cephfs":
        return "cephfs"
    return None


def _ctx(ctx: dict[str, str], key: str) -> str:
    value = ctx.get(key)
    if not value:
        raise InvalidArgument(f"publish context lacks {key!r}", reason="invalid_publish_context", field=key)
    return value


def client_spec(kind: CephKind, ctx: dict[str, str], node_id: str, given: CephClientSpec | None) -> CephClientSpec:
    """The cephx identity this node uses for a volume of `kind` (see the module docstring)."""
    if given is not None:
        return given
    conf = ctx.get("conf") or "/etc/ceph/ceph.conf"
    user = _ctx(ctx, "user") if kind == "rbd" else ctx.get("client_id_prefix", NODE_CLIENT_PREFIX) + node_id
    return CephClientSpec(conf, f"/etc/ceph/ceph.client.{user}.keyring", user)


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
    fstype: str = "ext4",
    block: bool = False,
) -> CephStaged:
    """`block` (RBD only): attach the image and leave its device raw (`mount` is ignored)."""
    if kind == "rbd":
        return await _stage_rbd(ctx, spec, node_id, volume_id, "" if block else mount, workdir, readonly, fstype)
    if block:
        raise InvalidArgument("a CephFS volume has no block device: use mount access", reason="block_cephfs")
    return await _stage_cephfs(ctx, spec, volume_id, mount, readonly)


async def unstage(staged: CephStaged, *, fenced: bool = False, node_id: str | None = None) -> None:
    """Unmount and detach (idempotent). `fenced`: the client is cut off, so do not wait for
    it to close cleanly, and leave its address record to the unfence. After a clean
    unstage, the node's RBD address record goes (`node_id` given)."""
    if staged.rbd is not None:
        await asyncio.to_thread(node_ceph.detach_rbd, staged.rbd, staged.mount, fenced=fenced)
        if not fenced and node_id is not None:
            try:
                await _forget_address(staged.spec, staged.rbd.pool, staged.rbd.image, node_id)
            except Exception as exc:  # a stale record only makes a later fence blocklist a dead address
                log.warning("could not forget %s's address on %s: %s", node_id, staged.rbd.image, exc)
    elif staged.fs is not None:
        await asyncio.to_thread(node_ceph.unmount_cephfs, staged.fs, fenced=fenced)


# -- RBD -----------------------------------------------------------------------------------


async def _record_address(spec: CephClientSpec, pool: str, image: str, node_id: str, addr: str) -> None:
    from berth_shared.backends.rbd import RbdBackend

    backend = RbdBackend({"conf": spec.conf, "keyring": spec.keyring, "user": spec.user, "pool": pool})
    try:
        await backend.record_node_address(image, node_id, addr)
    finally:
        await backend.close()


async def _forget_address(spec: CephClientSpec, pool: str, image: str, node_id: str) -> None:
    from berth_shared.backends.rbd import RbdBackend

    backend = RbdBackend({"conf": spec.conf, "keyring": spec.keyring, "user": spec.user, "pool": pool})
    try:
        await backend.forget_node_address(image, node_id)
    finally:
        await backend.close()


async def _stage_rbd(
    ctx: dict[str, str],
    spec: CephClientSpec,
    node_id: str,
    volume_id: str,
    mount: str,
    workdir: Path,
    readonly: bool,
    fstype: str,
) -> CephStaged:
    pool, image = _ctx(ctx, "pool"), _ctx(ctx, "image")
    att = await asyncio.to_thread(node_ceph.attach_rbd, spec, pool, image, workdir, read_only=readonly)
    staged = CephStaged("rbd", volume_id, mount, att.device, att.client_address, spec, rbd=att)
    try:
        if not att.client_address:
            raise AttachError(
                f"attached {pool}/{image} with {att.method} but cannot tell its Ceph client address: "
                "a fence of this node could not cut it off"
            )
        await _record_address(spec, pool, image, node_id, att.client_address)
        if not mount:
            pass  # raw block: the device is the volume
        elif readonly:
            if not await asyncio.to_thread(node_ceph.has_filesystem, att.device):
                raise FailedPrecondition(f"volume {volume_id} has no file system to mount readonly")
            options = "ro,norecovery" if fstype == "xfs" else "ro,noload"
            await asyncio.to_thread(node_ceph.format_and_mount, att.device, mount, fstype, options)
        else:
            await asyncio.to_thread(node_ceph.format_and_mount, att.device, mount, fstype)
    except BaseException:
        await asyncio.to_thread(node_ceph.detach_rbd, att, mount)
        raise
    return staged


# -- CephFS --------------------------------------------------------------------------------


async def _stage_cephfs(
    ctx: dict[str, str], spec: CephClientSpec, volume_id: str, mount: str, readonly: bool
) -> CephStaged:
    if readonly:
        raise FailedPrecondition("readonly CephFS mounts are not supported by this node yet", reason="readonly_cephfs")
    path = _ctx(ctx, "path")
    m = await asyncio.to_thread(node_ceph.mount_cephfs, spec, path, Path(mount), fs_name=ctx.get("fs_name"))
    if m.client_address is None:
        # The kernel client does not tell its address; the fence still evicts every session
        # of the node's own cephx id (client.berth-node-<node>), which is why nodes use one.
        log.info("mounted %s with the %s client; its address is unknown, fences go by cephx id", path, m.method)
    return CephStaged("cephfs", volume_id, mount, None, m.client_address, spec, fs=m)

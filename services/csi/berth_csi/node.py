"""The CSI Node service: real storage on this host, staged through
`berth_shared.node.staging` (file backend: loop device, ext4/xfs, mounts; RBD: rbd-fuse +
loop (or krbd/nbd), then ext4/xfs or a raw device; CephFS: a ceph-fuse (or kernel) mount of
the subvolume), per-volume serialised, idempotent, and fenced by the attacher's heartbeat
replies, which carry each Ceph volume's client address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections import defaultdict
from typing import Any

from berth_csi import ZONE_KEY
from berth_csi import mapping as m
from berth_csi.errors import required, rpc
from berth_csi.pb import csi
from berth_csi.settings import CsiSettings
from berth_csi.state import NodeState, VolumeState
from berth_shared.bus import Bus
from berth_shared.errors import AlreadyExists, BerthError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from berth_shared.messages.attacher import StagedVolume
from berth_shared.node import NodeHeartbeat, Staged, StageRequest, host, mounts, read_boot_id, staging

log = logging.getLogger(__name__)

RPC = csi.NodeServiceCapability.RPC.Type
CAPABILITIES = (RPC.STAGE_UNSTAGE_VOLUME, RPC.GET_VOLUME_STATS, RPC.EXPAND_VOLUME, RPC.VOLUME_CONDITION)
Usage = csi.VolumeUsage


class NodeService:
    def __init__(self, settings: CsiSettings, bus: Bus | None, *, token: str | None = None) -> None:
        self.settings = settings
        self.state = NodeState(settings.node_state_dir)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.beats: NodeHeartbeat | None = None
        if bus is not None:
            self.beats = NodeHeartbeat(
                bus,
                settings.node_id,
                token or settings.heartbeat_token(),
                staged=self.staged,
                drop=self.drop_all,
                interval_s=settings.heartbeat_interval_s,
                zone=settings.zone,
                boot_id=read_boot_id(settings.boot_id_file),
                max_volumes=settings.max_volumes_per_node,
            )

    # -- heartbeat and fencing -------------------------------------------------

    def staged(self) -> list[StagedVolume]:
        return [
            StagedVolume(
                volume_id=v.volume_id,
                device=v.staged.device,
                mount=None if v.block else v.staging_path,
                client_address=v.staged.client_address,
            )
            for v in self.state.all()
        ]

    async def drop_all(self) -> None:
        """After a fence: unpublish every target and unstage every volume this node holds,
        and remember the generation each was taken away at."""
        for st in self.state.all():
            async with self._locks[st.volume_id]:
                try:
                    for target in list(st.targets):
                        await _unpublish(target, fenced=True)
                    st.targets.clear()
                    await staging.unstage(st.staged, fenced=True, node_id=self.settings.node_id)
                    self.state.record_fenced(st.volume_id, st.generation or 0)
                    self.state.remove(st.volume_id)
                except Exception as exc:
                    log.error("could not drop volume %s after the fence: %s", st.volume_id, exc)

    async def _fresh_fence_view(self) -> None:
        """Stage only knowing the fence state: a restarted (or partitioned) adapter first
        hears from the attacher, so a stale publish context can never remount a volume that
        was fenced away while this node was silent."""
        if self.beats is None:
            return
        age = self.beats.age()
        if age is not None and age < 3 * self.beats.interval_s:
            return
        try:
            await self.beats.beat()
        except Exception as exc:  # bus down, closed, or the attacher refuses: all the same here
            why = exc.detail if isinstance(exc, BerthError) else str(exc) or type(exc).__name__
            raise Unavailable(
                f"node {self.settings.node_id} cannot reach the attacher ({why}); "
                "not staging without knowing whether it is fenced"
            ) from exc

    def _check_fence(self, volume_id: str, generation: int | None) -> None:
        if self.beats is not None and (self.beats.fenced or volume_id in self.beats.blocked):
            raise FailedPrecondition(
                f"node {self.settings.node_id} is fenced: volume {volume_id} may not be staged here until the node "
                "has dropped its stale mounts and been unfenced",
                reason="node_fenced",
            )
        fenced_at = self.state.fenced().get(volume_id)
        if fenced_at is not None and (generation is None or generation <= fenced_at):
            raise FailedPrecondition(
                f"volume {volume_id} was fenced away from node {self.settings.node_id} at generation {fenced_at}; "
                "this publish context is stale: publish the volume again",
                reason="stale_publish_context",
            )

    # -- stage / unstage ---------------------------------------------------------

    @rpc
    async def NodeStageVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(request.staging_target_path, "staging_target_path")
        required(request.HasField("volume_capability"), "volume_capability")
        cap = request.volume_capability
        pctx = dict(request.publish_context)
        backend = staging.backend_of(pctx)
        stager = staging.stager(backend)
        m.check_capability(cap, shared_fs=backend == "cephfs")
        source = stager.source(pctx)
        generation = int(pctx["generation"]) if pctx.get("generation", "").isdigit() else None
        vid, path, block = request.volume_id, request.staging_target_path, m.is_block(cap)
        self.state.get(vid)  # checks the id
        await self._fresh_fence_view()
        async with self._locks[vid]:
            self._check_fence(vid, generation)  # under the lock: a fence recovery may be running
            st = self.state.get(vid)
            same_volume = st is None or (st.staged.backend, st.staged.source) == (backend, source)
            if st is not None and (st.staging_path != path or st.block != block or not same_volume):
                raise AlreadyExists(
                    f"volume {vid} is already staged at {st.staging_path} ({'block' if st.block else 'mount'}); "
                    "unstage it first"
                )
            if st is not None:
                done = st.staged.device is not None if block else st.staged.mount == path
                if done and await asyncio.to_thread(staging.is_staged, st.staged):
                    return csi.NodeStageVolumeResponse()  # staged already: nothing to do
                if st.staged.device is not None or st.staged.mount is not None:
                    # Half done (a crash mid-stage) or no longer in place (a reboot, a killed
                    # fuse daemon): clear what is left, then stage afresh.
                    await staging.unstage(st.staged, node_id=self.settings.node_id)
            readonly = int(cap.access_mode.mode) in m.READ_ONLY_MODES
            st = VolumeState(
                volume_id=vid,
                staging_path=path,
                block=block,
                generation=generation,
                targets=st.targets if st else {},
                staged=Staged(volume_id=vid, backend=backend, source=source, readonly=readonly),
            )
            self.state.put(st)  # first: a crash from here on leaves what to clean up

            def on_device(device: str) -> None:
                st.staged = st.staged.model_copy(update={"device": device})
                self.state.put(st)

            req = StageRequest(
                volume_id=vid,
                context=pctx,
                node_id=self.settings.node_id,
                target=None if block else path,
                workdir=self.state.root / "node",
                fstype=(cap.mount.fs_type or None) if not block else None,
                readonly=readonly,
                mount_options=tuple(cap.mount.mount_flags) if not block and backend != "cephfs" else (),
                identity=self.settings.ceph_client(backend, pctx),
                on_device=on_device,
            )
            try:
                st.staged = await staging.stage(req)
            except BaseException:
                if st.staged.device is None:
                    self.state.remove(vid)  # nothing was attached: nothing to remember
                raise
            self.state.put(st)
        return csi.NodeStageVolumeResponse()

    @rpc
    async def NodeUnstageVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(request.staging_target_path, "staging_target_path")
        vid = request.volume_id
        self.state.get(vid)
        async with self._locks[vid]:
            st = self.state.get(vid)
            busy = [t for t in (st.targets if st else {}) if mounts.is_mounted(t)]
            if busy:
                raise FailedPrecondition(f"volume {vid} is still published at {', '.join(busy)}; unpublish it first")
            if st is None:
                await staging.unpublish(request.staging_target_path)
            else:
                await staging.unstage(st.staged, node_id=self.settings.node_id)
                self.state.remove(vid)
        return csi.NodeUnstageVolumeResponse()

    # -- publish / unpublish -------------------------------------------------------

    @rpc
    async def NodePublishVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(request.staging_target_path, "staging_target_path")
        required(request.target_path, "target_path")
        required(request.HasField("volume_capability"), "volume_capability")
        cap = request.volume_capability
        m.check_capability(cap, shared_fs=True)  # MULTI_NODE_MULTI_WRITER: checked against the stage below
        vid, target = request.volume_id, request.target_path
        readonly = bool(request.readonly) or int(cap.access_mode.mode) in m.READ_ONLY_MODES
        self.state.get(vid)
        async with self._locks[vid]:
            st = self.state.get(vid)
            if st is None or st.staging_path != request.staging_target_path:
                raise FailedPrecondition(
                    f"volume {vid} is not staged at {request.staging_target_path}; call NodeStageVolume first",
                    reason="not_staged",
                )
            if int(cap.access_mode.mode) == m.AccessMode.MULTI_NODE_MULTI_WRITER and st.backend != "cephfs":
                m.check_capability(cap)  # raises: only CephFS volumes take several writers
            if st.block != m.is_block(cap):
                raise InvalidArgument(
                    f"volume_capability: volume {vid} was staged for {'block' if st.block else 'mount'} access",
                    field="volume_capability",
                )
            if target in st.targets and st.targets[target] != readonly:
                raise AlreadyExists(f"volume {vid} is already published at {target} with readonly={st.targets[target]}")
            source = st.staged.device if st.block else st.staging_path
            if source is None:
                raise FailedPrecondition(f"volume {vid} has no device staged; call NodeStageVolume again")
            await staging.publish(source, target, readonly=readonly)
            st.targets[target] = readonly
            self.state.put(st)
        return csi.NodePublishVolumeResponse()

    @rpc
    async def NodeUnpublishVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(request.target_path, "target_path")
        vid, target = request.volume_id, request.target_path
        self.state.get(vid)
        async with self._locks[vid]:
            await _unpublish(target)
            st = self.state.get(vid)
            if st is not None and target in st.targets:
                del st.targets[target]
                self.state.put(st)
        return csi.NodeUnpublishVolumeResponse()

    # -- expansion and stats ---------------------------------------------------------

    @rpc
    async def NodeExpandVolume(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(request.volume_path, "volume_path")
        vid = request.volume_id
        async with self._locks[vid]:
            st = self.state.get(vid)
            if st is None:
                raise NotFound(f"volume {vid} is not staged on node {self.settings.node_id}", reason="not_staged")
            if st.staged.device is None:
                return csi.NodeExpandVolumeResponse()  # CephFS: a subvolume quota, nothing to grow here
            in_use = any(mounts.is_mounted(t) for t in st.targets)
            await staging.expand(st.staged, in_use=in_use)
            size = host.device_size(st.staged.device)
        if request.HasField("capacity_range") and request.capacity_range.required_bytes > size:
            raise FailedPrecondition(
                f"volume {vid} is {size} bytes on this node, {request.capacity_range.required_bytes} asked: "
                "expand it with ControllerExpandVolume first",
                reason="controller_expansion_pending",
            )
        return csi.NodeExpandVolumeResponse(capacity_bytes=size)

    @rpc
    async def NodeGetVolumeStats(self, request: Any, context: Any) -> Any:
        required(request.volume_id, "volume_id")
        required(request.volume_path, "volume_path")
        path = request.volume_path
        if not await asyncio.to_thread(os.path.lexists, path):
            raise NotFound(f"volume_path {path} does not exist", reason="path_not_found")
        st = self.state.get(request.volume_id)
        if st is not None and st.block:
            return await self._block_stats(st, path)
        if not mounts.is_mounted(path):
            return csi.NodeGetVolumeStatsResponse(
                volume_condition=csi.VolumeCondition(abnormal=True, message=f"{path} is not mounted")
            )
        try:
            vfs = await asyncio.to_thread(_probe_fs, path)
        except OSError as exc:
            return csi.NodeGetVolumeStatsResponse(
                volume_condition=csi.VolumeCondition(abnormal=True, message=f"I/O on {path} fails: {exc.strerror}")
            )
        bytes_ = Usage(
            unit=Usage.BYTES,
            total=vfs.f_blocks * vfs.f_frsize,
            available=vfs.f_bavail * vfs.f_frsize,
            used=(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
        )
        inodes = Usage(unit=Usage.INODES, total=vfs.f_files, available=vfs.f_favail, used=vfs.f_files - vfs.f_ffree)
        return csi.NodeGetVolumeStatsResponse(usage=[bytes_, inodes], volume_condition=csi.VolumeCondition())

    async def _block_stats(self, st: VolumeState, path: str) -> Any:
        device = st.staged.device or ""
        try:
            size = host.device_size(device)
        except OSError as exc:
            return csi.NodeGetVolumeStatsResponse(
                volume_condition=csi.VolumeCondition(abnormal=True, message=f"device {device}: {exc.strerror}")
            )
        return csi.NodeGetVolumeStatsResponse(
            usage=[Usage(unit=Usage.BYTES, total=size)], volume_condition=csi.VolumeCondition()
        )

    # -- info ---------------------------------------------------------------------------

    @rpc
    async def NodeGetCapabilities(self, request: Any, context: Any) -> Any:
        caps = [csi.NodeServiceCapability(rpc=csi.NodeServiceCapability.RPC(type=t)) for t in CAPABILITIES]
        return csi.NodeGetCapabilitiesResponse(capabilities=caps)

    @rpc
    async def NodeGetInfo(self, request: Any, context: Any) -> Any:
        return csi.NodeGetInfoResponse(
            node_id=self.settings.node_id,
            max_volumes_per_node=self.settings.max_volumes_per_node,
            accessible_topology=csi.Topology(segments={ZONE_KEY: self.settings.zone}),
        )


def _probe_fs(path: str) -> os.statvfs_result:
    """statvfs, after reading the directory: a shut-down or failing file system answers EIO."""
    if stat.S_ISDIR(os.stat(path).st_mode):
        with os.scandir(path) as entries:
            next(entries, None)
    return os.statvfs(path)


async def _unpublish(target: str, *, fenced: bool = False) -> None:
    """Unmount a target (every mount stacked on it) and remove it; a missing one is fine."""
    await staging.unpublish(target, fenced=fenced)
    await asyncio.to_thread(_remove, target)


def _remove(target: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(target) and not os.path.islink(target):
            os.rmdir(target)
        else:
            os.unlink(target)

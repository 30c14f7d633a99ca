"""Ceph volumes through the CSI socket, on the session's real Ceph: an RBD volume (ext4 over
rbd-fuse + loop, or whatever block path the host has) and a CephFS subvolume (ceph-fuse,
MULTI_NODE_MULTI_WRITER), each staged, published, written, torn down and staged again, and
nothing left behind: no mount, no loop device, no fuse daemon. And an RBD group snapshot of
two volumes in use, restored."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ceph_clusters import TYPES, rbd_image, register_ceph
from csi_harness import (
    AM,
    CALL_S,
    CsiStack,
    block_cap,
    csi_stack,
    kubelet_dir,
    mount_cap,
    read,
    stage_publish,
    teardown,
    write,
)

from berth_csi.pb import csi, rpc
from berth_csi.settings import CsiSettings
from berth_shared.backends import build_backend
from berth_shared.backends.cephfs import CephFsBackend
from berth_shared.node import mounts, staging
from berth_shared.settings import Settings
from berth_testing import MakeSettings, Tenants
from berth_testing.ceph import CephCluster, skip_unless_can_attach

# gRPC's asyncio poller binds to one event loop: every CSI test shares the session's.
pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.root]
T = TypeVar("T")
S = TypeVar("S", bound=Settings)


def _with_csi(make_settings: MakeSettings, **extra: Any) -> MakeSettings:
    """make_settings, with this node's cephx identity added to the adapter's settings."""

    def make(settings_cls: type[S], /, **kw: Any) -> S:
        return make_settings(settings_cls, **(kw | extra if issubclass(settings_cls, CsiSettings) else kw))

    return make


async def _io(fn: Callable[[], T], within: float = CALL_S) -> T:
    """Blocking file I/O in a daemon thread, bounded: it fails the test, never hangs it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(result)

    def run() -> None:
        try:
            loop.call_soon_threadsafe(settle, fn(), None)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)

    threading.Thread(target=run, daemon=True).start()
    try:
        return await asyncio.wait_for(done, within)
    except TimeoutError:
        raise AssertionError(f"file I/O hung for {within}s") from None


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _leftovers(st: CsiStack) -> dict[str, list[str]]:
    """Mounts, loop devices and processes that still refer to the stack's work dir."""
    root = str(st.workdir)
    held = [m.target for m in mounts.table() if m.target.startswith(root)]
    loops = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip().startswith(root):
                loops.append(backing.parent.parent.name)
    procs = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if any(a.startswith(root.encode()) for a in args) and args[0].endswith((b"rbd-fuse", b"ceph-fuse")):
                procs.append(f"{cmdline.parent.name}: {b' '.join(args).decode(errors='replace')}")
    return {"mounts": held, "loops": loops, "procs": procs}


async def _force_clean(st: CsiStack) -> None:
    """After a failure: drop what the node still holds (bounded; the fuse daemons killed)."""
    for vs in st.node_service.state.all():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(staging.unstage(vs.staged, fenced=True, node_id="node-a"), 60)


def _check_staged(st: CsiStack, vid: str, backend: str) -> str:
    """The node state and the heartbeat's staged list carry the volume's client address."""
    vs = st.node_service.state.get(vid)
    assert vs is not None and vs.backend == backend and vs.staged.ceph is not None, vs
    (beat,) = [s for s in st.node_service.staged() if s.volume_id == vid]
    assert beat.client_address and beat.client_address == vs.staged.client_address, (beat, vs)
    return str(beat.client_address)


async def test_rbd_volume_through_the_socket(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    skip_unless_can_attach("rbd")
    make = _with_csi(make_settings, ceph_conf=str(ceph.conf), rbd_user=ceph.user, rbd_keyring=str(ceph.keyring))
    async with csi_stack(make, tenants, tmp_path) as st:
        try:
            await register_ceph(st.prov, tenants.admin, ceph, "rbd")
            vol = await st.create("pg-rbd", parameters={"type": TYPES["rbd"]})
            vid = vol.volume_id
            cap = mount_cap()

            pctx = await st.publish(vid)
            assert pctx["backend"] == "rbd" and pctx["image"], pctx
            staging, target = await stage_publish(st, vid, pctx, cap, "p1")
            _check_staged(st, vid, "rbd")
            await _io(lambda: _write(Path(target, "table.dat"), b"committed row\n"))
            await teardown(st, vid, staging, target)
            assert _leftovers(st) == {"mounts": [], "loops": [], "procs": []}

            # Staged again (a new attachment): the data is there.
            pctx = await st.publish(vid)
            staging, target = await stage_publish(st, vid, pctx, cap, "p2")
            assert await _io(lambda: Path(target, "table.dat").read_bytes()) == b"committed row\n"
            await teardown(st, vid, staging, target)

            await st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=CALL_S)
            assert _leftovers(st) == {"mounts": [], "loops": [], "procs": []}
        finally:
            await _force_clean(st)


async def test_rbd_raw_block_through_the_socket(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    skip_unless_can_attach("rbd")
    make = _with_csi(make_settings, ceph_conf=str(ceph.conf), rbd_user=ceph.user, rbd_keyring=str(ceph.keyring))
    async with csi_stack(make, tenants, tmp_path) as st:
        try:
            await register_ceph(st.prov, tenants.admin, ceph, "rbd")
            cap = block_cap()
            vid = (await st.create("raw-rbd", parameters={"type": TYPES["rbd"]}, cap=cap)).volume_id
            staging = kubelet_dir(st.path("staging", vid))
            for pod, do in (("p1", "write"), ("p2", "read")):
                pctx = await st.publish(vid, cap=cap)
                stage = csi.NodeStageVolumeRequest(
                    volume_id=vid, publish_context=pctx, staging_target_path=staging, volume_capability=cap
                )
                await st.node.NodeStageVolume(stage, timeout=CALL_S)
                assert not mounts.is_mounted(staging)  # no file system: the device is the volume
                _check_staged(st, vid, "rbd")
                target = st.path("pods", pod, "dev")
                kubelet_dir(os.path.dirname(target))
                publish = csi.NodePublishVolumeRequest(
                    volume_id=vid,
                    publish_context=pctx,
                    staging_target_path=staging,
                    target_path=target,
                    volume_capability=cap,
                )
                await st.node.NodePublishVolume(publish, timeout=CALL_S)
                if do == "write":
                    await _io(functools.partial(write, target, b"raw block row", offset=1 << 20))
                else:
                    assert await _io(functools.partial(read, target, offset=1 << 20, size=13)) == b"raw block row"
                await teardown(st, vid, staging, target)
                assert _leftovers(st) == {"mounts": [], "loops": [], "procs": []}
            await st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=CALL_S)
        finally:
            await _force_clean(st)


async def test_cephfs_volume_through_the_socket(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    skip_unless_can_attach("cephfs")
    backend = build_backend("cephfs", ceph.backend_config("cephfs"))
    assert isinstance(backend, CephFsBackend)
    keyring = tmp_path / "node-a.keyring"
    make = _with_csi(make_settings, ceph_conf=str(ceph.conf), cephfs_keyring=str(keyring))
    try:
        async with csi_stack(make, tenants, tmp_path) as st:
            try:
                await register_ceph(st.prov, tenants.admin, ceph, "cephfs")
                cap = mount_cap(AM.MULTI_NODE_MULTI_WRITER)
                vol = await st.create("shared-fs", parameters={"type": TYPES["cephfs"]}, cap=cap)
                vid = vol.volume_id
                # The operator's step: the node's own cephx id, authorised on the subvolume.
                client_id = backend.node_client_id("node-a")
                key = await backend.authorize(vid, client_id)
                keyring.write_text(f"[client.{client_id}]\n\tkey = {key}\n")

                pctx = await st.publish(vid, cap=cap)
                assert pctx["backend"] == "cephfs" and pctx["path"], pctx
                staging, target = await stage_publish(st, vid, pctx, cap, "p1")
                if st.node_service.state.get(vid).staged.ceph.fs.method == "fuse":
                    _check_staged(st, vid, "cephfs")  # the kernel client does not tell its address
                await _io(lambda: _write(Path(target, "shared.dat"), b"shared row\n"))
                await teardown(st, vid, staging, target)
                assert _leftovers(st) == {"mounts": [], "loops": [], "procs": []}

                pctx = await st.publish(vid, cap=cap)
                staging, target = await stage_publish(st, vid, pctx, cap, "p2")
                assert await _io(lambda: Path(target, "shared.dat").read_bytes()) == b"shared row\n"
                await teardown(st, vid, staging, target)

                await backend.deauthorize(vid, client_id)
                await st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=CALL_S)
                assert _leftovers(st) == {"mounts": [], "loops": [], "procs": []}
            finally:
                await _force_clean(st)
    finally:
        await backend.close()


async def test_rbd_group_snapshot_through_the_socket(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, ceph: CephCluster
) -> None:
    """Two RBD volumes written through their nodes' devices; the group snapshot is one cut
    (an RBD group snapshot: librbd holds the members' writes while it is taken), crash
    consistent: what the pods synced before it is in it, what they wrote after is not."""
    skip_unless_can_attach("rbd")
    make = _with_csi(make_settings, ceph_conf=str(ceph.conf), rbd_user=ceph.user, rbd_keyring=str(ceph.keyring))
    async with csi_stack(make, tenants, tmp_path) as st:
        try:
            await register_ceph(st.prov, tenants.admin, ceph, "rbd")
            g, cap, params = rpc.GroupControllerStub(st.channel), block_cap(), {"type": TYPES["rbd"]}
            vids = [(await st.create(f"rbd-db-{i}", parameters=params, cap=cap)).volume_id for i in range(2)]
            staged = [(v, *await stage_publish(st, v, await st.publish(v, cap=cap), cap, f"db-{v}")) for v in vids]
            for vid, _staging, dev in staged:
                await _io(functools.partial(write, dev, f"txid 7 {vid}".encode(), offset=1 << 20))
            req = csi.CreateVolumeGroupSnapshotRequest(name="rbd-group-1", source_volume_ids=vids)
            gs = (await g.CreateVolumeGroupSnapshot(req, timeout=CALL_S)).group_snapshot
            assert gs.ready_to_use and sorted(s.source_volume_id for s in gs.snapshots) == sorted(vids)
            for vid, _staging, dev in staged:
                await _io(functools.partial(write, dev, f"txid 8 {vid}".encode(), offset=1 << 20))
                await teardown(st, vid, _staging, dev)

            for snap in gs.snapshots:
                source = csi.VolumeContentSource(
                    snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
                )
                restored = await st.create(
                    f"r-{snap.source_volume_id}", parameters=params, cap=cap, volume_content_source=source
                )
                with rbd_image(ceph, restored.volume_id) as image:
                    assert bytes(image.read(1 << 20, 64)).rstrip(b"\0") == f"txid 7 {snap.source_volume_id}".encode()
                await st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=restored.volume_id), timeout=CALL_S)
            ids = [s.snapshot_id for s in gs.snapshots]
            delete = csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id, snapshot_ids=ids)
            await g.DeleteVolumeGroupSnapshot(delete, timeout=CALL_S)
            for vid in vids:
                with rbd_image(ceph, vid) as image:
                    assert list(image.list_snaps()) == []
                await st.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=CALL_S)
            assert _leftovers(st) == {"mounts": [], "loops": [], "procs": []}
        finally:
            await _force_clean(st)

"""The CSI adapter on a unix socket, with a provisioner and an attacher in-process on the
session's nats-server; a real gRPC client (the generated stubs) plays the sidecars and kubelet."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_csi import ZONE_KEY
from berth_csi.pb import csi, rpc
from berth_csi.server import CsiServer
from berth_csi.settings import CsiSettings
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.bus import Bus
from berth_shared.node import host, mounts
from berth_testing import MakeSettings, Tenants, eventually, running

GIB = 1024**3
AM = csi.VolumeCapability.AccessMode
CALL_S = 120.0  # every gRPC call and file operation is bounded: a wedged client fails the test


def mount_cap(mode: int = AM.SINGLE_NODE_WRITER, fs_type: str = "") -> Any:
    return csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type=fs_type), access_mode=AM(mode=mode))


def block_cap(mode: int = AM.SINGLE_NODE_WRITER) -> Any:
    return csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=AM(mode=mode))


def zone_topology(zone: str = "default") -> Any:
    return csi.Topology(segments={ZONE_KEY: zone})


# Small synchronous file helpers: the tests play kubelet and a pod on this host.
def write(path: str | Path, data: bytes, offset: int | None = None) -> None:
    """Write and fsync (a file, or at `offset` into a device node)."""
    with open(path, "r+b" if offset is not None else "wb") as f:
        if offset is not None:
            f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read(path: str | Path, offset: int | None = None, size: int = -1) -> bytes:
    with open(path, "rb") as f:
        if offset is not None:
            f.seek(offset)
        return f.read(size)


def exists(path: str | Path) -> bool:
    return os.path.lexists(path)


def rmdir(path: str | Path) -> None:
    os.rmdir(path)


@dataclass
class NodePlugin:
    """One node's adapter (node mode) and a client on its socket."""

    server: CsiServer
    channel: grpc.aio.Channel
    node: Any

    @property
    def service(self) -> Any:
        assert self.server.node is not None
        return self.server.node


@dataclass
class CsiStack:
    prov: httpx.AsyncClient
    att: httpx.AsyncClient
    bus: Bus
    tenants: Tenants
    workdir: Path
    server: CsiServer
    channel: grpc.aio.Channel
    identity: Any
    controller: Any
    node: Any
    cluster_root: Path
    extra: list[NodePlugin] = field(default_factory=list)

    def h(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    @property
    def node_service(self) -> Any:
        assert self.server.node is not None
        return self.server.node

    def path(self, *parts: str) -> str:
        """A kubelet-style path under the test's short work dir."""
        return str(self.workdir.joinpath(*parts))

    async def create(self, name: str, size_gib: int = 1, **kw: Any) -> Any:
        req = csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=size_gib * GIB),
            volume_capabilities=[kw.pop("cap", mount_cap())],
            parameters=kw.pop("parameters", {"type": "standard"}),
            **kw,
        )
        return (await self.controller.CreateVolume(req)).volume

    async def publish(self, volume_id: str, node_id: str = "node-a", cap: Any = None, readonly: bool = False) -> Any:
        req = csi.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=node_id, volume_capability=cap or mount_cap(), readonly=readonly
        )
        return dict((await self.controller.ControllerPublishVolume(req)).publish_context)

    async def add_node(self, make: MakeSettings, node_id: str, zone: str = "default", **overrides: Any) -> NodePlugin:
        """A second node's adapter (node mode) on its own socket, heartbeating."""
        settings = make(
            CsiSettings,
            mode="node",
            node_id=node_id,
            zone=zone,
            csi_endpoint=str(self.workdir / f"{node_id}.sock"),
            state_dir=self.workdir / "state" / node_id,
            node_token=self.tenants.admin,
            heartbeat_interval_s=0.2,
            **overrides,
        )
        assert isinstance(settings, CsiSettings)
        server = CsiServer(settings)
        channel = grpc.aio.insecure_channel(f"unix://{server.socket_path}")
        plugin = NodePlugin(server, channel, rpc.NodeStub(channel))
        self.extra.append(plugin)  # stopped with the stack, whatever happens next
        await server.start()
        await first_beat(server)
        return plugin


@asynccontextmanager
async def csi_stack(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, **policy: Any
) -> AsyncIterator[CsiStack]:
    prov_settings = make_settings(ProvisionerSettings)
    att_settings = make_settings(
        AttacherSettings,
        # Dead after 3 s of silence: fast failover, yet no false fence on a loaded machine.
        # The liveness pass every 0.5 s: stopping the attacher cancels it, and a cancel that
        # lands inside a SQLite query can hang (aiosqlite 0.22 under SQLAlchemy), so the pass
        # should mostly be asleep when the stack stops.
        **({"heartbeat_interval_s": 0.2, "dead_after_s": 3.0, "monitor_interval_s": 0.5} | policy),
    )
    # Unix socket paths are limited to 107 bytes: keep the sockets (and mounts) under /tmp.
    workdir = Path(tempfile.mkdtemp(prefix="bcsi-", dir="/tmp"))
    csi_settings = make_settings(
        CsiSettings,
        mode="both",
        node_id="node-a",
        csi_endpoint=str(workdir / "csi.sock"),
        state_dir=workdir / "state" / "node-a",
        default_token=tenants.a,
        node_token=tenants.admin,
        heartbeat_interval_s=0.2,
    )
    async with AsyncExitStack() as es:
        # Every resource is released whatever fails later: a gRPC server left running
        # would hang the interpreter's exit.
        es.callback(shutil.rmtree, workdir, True)
        cluster_root = (prov_settings.data_dir / "clusters" / "local").resolve()
        es.push_async_callback(_clean, workdir, cluster_root)
        prov = await es.enter_async_context(running(provisioner_app(prov_settings)))
        att = await es.enter_async_context(running(attacher_app(att_settings)))
        bus = await Bus.connect(prov_settings.nats_url, "csi-tests")
        es.push_async_callback(bus.close)
        assert isinstance(csi_settings, CsiSettings)
        server = CsiServer(csi_settings)
        es.push_async_callback(server.stop, 0)
        await server.start()
        await first_beat(server)  # the attacher knows node-a before the first publish
        channel = grpc.aio.insecure_channel(f"unix://{server.socket_path}")
        es.push_async_callback(channel.close)
        st = CsiStack(
            prov=prov,
            att=att,
            bus=bus,
            tenants=tenants,
            workdir=workdir,
            server=server,
            channel=channel,
            identity=rpc.IdentityStub(channel),
            controller=rpc.ControllerStub(channel),
            node=rpc.NodeStub(channel),
            cluster_root=cluster_root,
        )
        es.push_async_callback(_stop_extra, st)
        yield st


async def first_beat(server: CsiServer) -> None:
    """One answered heartbeat (retried: a loaded machine may miss the first deadline)."""
    assert server.node is not None and server.node.beats is not None
    beats = server.node.beats

    async def answered() -> bool:
        try:
            await beats.beat()
        except Exception:
            return False
        return True

    await eventually(answered, what=f"a heartbeat from {beats.node_id}")


async def _stop_extra(st: CsiStack) -> None:
    for plugin in st.extra:
        await plugin.channel.close()
        await plugin.server.stop(grace=0)


async def _clean(workdir: Path, cluster_root: Path) -> None:
    """Whatever a failed test left: mounts under the work dir, loops on the cluster's files."""
    for m in sorted(mounts.table(), key=lambda m: len(m.target), reverse=True):
        if m.target.startswith(str(workdir)):
            with contextlib.suppress(Exception):
                mounts.umount(m.target, lazy=True)
    for device in _loops(cluster_root):
        with contextlib.suppress(Exception):
            host.detach_loop(device)
    shutil.rmtree(workdir, ignore_errors=True)


def _loops(cluster_root: Path) -> list[str]:
    return [d for p in cluster_root.rglob("*.img") for d in host.loops_backed_by(p)]


@dataclass
class Bare:
    server: CsiServer
    controller: Any
    node: Any


@asynccontextmanager
async def bare_adapter(make_settings: MakeSettings, **overrides: Any) -> AsyncIterator[Bare]:
    """The adapter alone on its socket (bus connected, no services behind it): for the
    checks it makes before any command is sent."""
    workdir = Path(tempfile.mkdtemp(prefix="bcsi-", dir="/tmp"))
    settings = make_settings(
        CsiSettings,
        **(
            {
                "node_id": "node-a",
                "csi_endpoint": str(workdir / "csi.sock"),
                "state_dir": workdir / "state",
                "default_token": "unused",
                "node_token": "unused",
                "heartbeat_interval_s": 5.0,
            }
            | overrides
        ),
    )
    assert isinstance(settings, CsiSettings)
    server = CsiServer(settings)
    channel = grpc.aio.insecure_channel(f"unix://{server.socket_path}")
    try:
        await server.start()
        yield Bare(server, rpc.ControllerStub(channel), rpc.NodeStub(channel))
    finally:
        await channel.close()
        await server.stop(grace=0)
        shutil.rmtree(workdir, ignore_errors=True)


def leftovers(st: CsiStack) -> dict[str, list[str]]:
    """Loop devices, mounts and files the stack still holds."""
    files = sorted(str(p.relative_to(st.cluster_root)) for p in st.cluster_root.rglob("*.img"))
    loops = _loops(st.cluster_root)
    held = [m.target for m in mounts.table() if m.target.startswith(str(st.workdir))]
    return {"files": files, "loops": loops, "mounts": held}


def kubelet_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


async def stage_publish(st: CsiStack, vid: str, pctx: dict[str, str], cap: Any, pod: str) -> tuple[str, str]:
    """NodeStage (twice: idempotent) and NodePublish as kubelet does; (staging, target): the
    target is a mount, or for raw block access the device node bound onto a file."""
    block = cap.WhichOneof("access_type") == "block"
    staging = kubelet_dir(st.path("staging", vid))
    target = st.path("pods", pod, "dev" if block else "mount")
    kubelet_dir(os.path.dirname(target))
    stage = csi.NodeStageVolumeRequest(
        volume_id=vid, publish_context=pctx, staging_target_path=staging, volume_capability=cap
    )
    await st.node.NodeStageVolume(stage, timeout=CALL_S)
    await st.node.NodeStageVolume(stage, timeout=CALL_S)  # idempotent
    assert mounts.is_mounted(staging) != block  # a raw device has no file system to mount
    publish = csi.NodePublishVolumeRequest(
        volume_id=vid, publish_context=pctx, staging_target_path=staging, target_path=target, volume_capability=cap
    )
    await st.node.NodePublishVolume(publish, timeout=CALL_S)
    assert mounts.is_mounted(target)
    return staging, target


async def teardown(st: CsiStack, vid: str, staging: str, target: str) -> None:
    """NodeUnpublish, NodeUnstage (twice) and ControllerUnpublish; the node keeps nothing of it."""
    await st.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target), timeout=CALL_S)
    unstage = csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging)
    await st.node.NodeUnstageVolume(unstage, timeout=CALL_S)
    await st.node.NodeUnstageVolume(unstage, timeout=CALL_S)  # idempotent
    assert not mounts.is_mounted(staging) and not mounts.is_mounted(target)
    assert st.node_service.state.get(vid) is None
    await st.controller.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-a"), timeout=CALL_S
    )


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Await a call that must fail; return its error."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded; an error was expected")

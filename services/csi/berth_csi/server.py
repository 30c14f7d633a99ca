"""The gRPC server on the unix socket: Identity always, Controller (with GroupController)
and/or Node by mode."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import grpc

from berth_csi.controller import ControllerService
from berth_csi.group_controller import GroupControllerService
from berth_csi.identity import IdentityService
from berth_csi.node import NodeService
from berth_csi.pb import csi, rpc
from berth_csi.settings import CsiSettings
from berth_shared.bus import Bus

log = logging.getLogger(__name__)
_pinned = False
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def _pin_grpc_aio() -> None:
    """Keep gRPC's asyncio runtime up for the whole process.

    Its last channel or server to be garbage-collected shuts the runtime down and joins
    its poller thread; when that happens while the interpreter is finalizing, the join
    never returns and the process hangs at exit (grpc/grpc#40447). One reference that is
    never released leaves the (daemon) poller thread to die with the process instead.
    """
    global _pinned
    if not _pinned:
        grpc.aio.init_grpc_aio()
        _pinned = True


class CsiServer:
    def __init__(self, settings: CsiSettings, bus: Bus | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self._own_bus = bus is None
        self.server: grpc.aio.Server | None = None
        self.controller: ControllerService | None = None
        self.node: NodeService | None = None

    @property
    def socket_path(self) -> Path:
        return self.settings.socket_path.resolve()

    @property
    def ready(self) -> bool:
        return self.bus is not None and self.bus.connected

    async def start(self) -> None:
        if self.bus is None:
            self.bus = await Bus.connect(
                self.settings.nats_url, f"csi-{self.settings.node_id}", creds=self.settings.nats_creds
            )
        _pin_grpc_aio()
        server = grpc.aio.server()
        rpc.add_IdentityServicer_to_server(IdentityService(lambda: self.ready), server)
        mode = self.settings.mode
        if mode in ("controller", "both"):
            self.controller = ControllerService(self.bus, self.settings)
            rpc.add_ControllerServicer_to_server(self.controller, server)
            rpc.add_GroupControllerServicer_to_server(GroupControllerService(self.bus, self.settings), server)
        if mode in ("node", "both"):
            self.node = NodeService(self.settings, self.bus)
            rpc.add_NodeServicer_to_server(self.node, server)
        path = self.socket_path
        if len(str(path).encode()) > MAX_SOCKET_PATH:
            raise ValueError(
                f"{path} is too long for a unix socket ({MAX_SOCKET_PATH} bytes at most): set BERTH_CSI_ENDPOINT"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a stale socket from a previous run
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        self.server = server
        if self.node is not None and self.node.beats is not None:
            self.node.beats.start()
        log.info("CSI %s service on unix://%s (node %s)", mode, path, self.settings.node_id)

    async def stop(self, grace: float = 2.0) -> None:
        if self.node is not None and self.node.beats is not None:
            await self.node.beats.stop()
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        if self._own_bus and self.bus is not None:
            await self.bus.close()
            self.bus = None
        self.socket_path.unlink(missing_ok=True)


def probe(socket_path: Path, timeout: float = 1.0) -> bool:
    """Does the adapter on this socket answer Probe with ready? (Used by `berth up`.)"""
    with contextlib.suppress(grpc.RpcError), grpc.insecure_channel(f"unix://{socket_path.resolve()}") as channel:
        reply = rpc.IdentityStub(channel).Probe(csi.ProbeRequest(), timeout=timeout)
        return bool(reply.ready.value)
    return False

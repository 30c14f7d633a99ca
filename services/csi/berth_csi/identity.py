"""The CSI Identity service: who the plugin is, what it offers, whether it is ready."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.wrappers_pb2 import BoolValue

from berth_csi import DRIVER_NAME, VERSION
from berth_csi.errors import rpc
from berth_csi.pb import csi

Cap = csi.PluginCapability


class IdentityService:
    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready

    @rpc
    async def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return csi.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=VERSION)

    @rpc
    async def GetPluginCapabilities(self, request: Any, context: Any) -> Any:
        # The plugin as a whole: the same answer from the controller and the node instances.
        caps = [
            Cap(service=Cap.Service(type=Cap.Service.CONTROLLER_SERVICE)),
            Cap(service=Cap.Service(type=Cap.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            Cap(service=Cap.Service(type=Cap.Service.GROUP_CONTROLLER_SERVICE)),
            Cap(volume_expansion=Cap.VolumeExpansion(type=Cap.VolumeExpansion.ONLINE)),
        ]
        return csi.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc
    async def Probe(self, request: Any, context: Any) -> Any:
        """Ready only while the bus is connected: without it no call can do anything."""
        return csi.ProbeResponse(ready=BoolValue(value=self.ready()))

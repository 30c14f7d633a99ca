"""Where a volume lives: asked of the provisioner over the bus (the attacher never reads
the provisioner's tables), with the backend built once per cluster."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from berth_shared.backends import Backend, BackendCache
from berth_shared.bus import Bus
from berth_shared.messages.provisioner import PREFIX, VolumeLocation


@dataclass(frozen=True)
class Located:
    volume_id: str
    tenant: str
    cluster_id: str
    backend_kind: str
    config: dict[str, Any]
    status: str


class Locator:
    def __init__(self, bus: Bus, service_token: str, timeout: float = 5.0) -> None:
        self.bus = bus
        self.token = service_token
        self.timeout = timeout
        self._backends = BackendCache()

    async def locate(self, volume_id: str) -> Located:
        loc = await self.bus.request_model(
            f"{PREFIX}.volume.locate", {"id": volume_id}, VolumeLocation, token=self.token, timeout=self.timeout
        )
        return Located(
            volume_id=loc.volume.id,
            tenant=loc.volume.tenant,
            cluster_id=loc.volume.cluster_id,
            backend_kind=loc.backend,
            config=loc.config,
            status=loc.volume.status,
        )

    def backend(self, cluster_id: str, kind: str, config: dict[str, Any]) -> Backend:
        return self._backends.get(cluster_id, kind, config)

    async def close(self) -> None:
        """Drop the backends' connections (Ceph: each holds a librados client)."""
        await self._backends.close()

from __future__ import annotations

from dataclasses import dataclass

import httpx

from berth_provisioner.config import ProvisionerSettings
from berth_shared.bus import Bus
from berth_testing import Tenants


@dataclass
class Provisioner:
    http: httpx.AsyncClient  # no default token: pass headers per call
    bus: Bus
    settings: ProvisionerSettings
    tenants: Tenants
    app: object

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

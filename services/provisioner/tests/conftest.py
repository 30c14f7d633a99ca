from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from provisioner_harness import Provisioner

from berth_provisioner.app import create_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.bus import Bus
from berth_testing import MakeSettings, Tenants, running


@pytest.fixture
async def prov(make_settings: MakeSettings, tenants: Tenants) -> AsyncIterator[Provisioner]:
    settings = make_settings(ProvisionerSettings)
    app = create_app(settings)
    async with running(app) as http:
        bus = await Bus.connect(settings.nats_url, "test-client")
        try:
            yield Provisioner(http, bus, settings, tenants, app)
        finally:
            await bus.close()

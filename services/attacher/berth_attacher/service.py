"""The attacher: its use cases by resource over one context, shared by the HTTP API
(api.py) and the bus commands (commands.py)."""

from __future__ import annotations

from berth_attacher.context import Context, Tainter
from berth_attacher.fencing import Fencing, fence_runner
from berth_attacher.grants import Grants
from berth_attacher.liveness import Policy
from berth_attacher.locator import Locator
from berth_attacher.nodes import Nodes
from berth_attacher.unfencing import Unfencing
from berth_shared.db import BusTables, Database, EventWriter, OutboxRelay
from berth_shared.telemetry import Metrics

SERVICE = "attacher"


class Attacher:
    def __init__(
        self,
        db: Database,
        tables: BusTables,
        relay: OutboxRelay | None,
        locator: Locator,
        policy: Policy,
        owner: str,
        tainter: Tainter | None = None,
        *,
        operation_lease_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.tables = tables
        self.relay = relay
        self.locator = locator
        self.runner = fence_runner(db, owner, operation_lease_s, metrics)
        ctx = Context(db, EventWriter(SERVICE, tables, relay), locator, policy, self.runner, tainter)
        self.ctx = ctx
        self.grants = Grants(ctx)
        self.nodes = Nodes(ctx)
        self.fencing = Fencing(ctx)
        self.unfencing = Unfencing(ctx)

    async def stop(self) -> None:
        await self.runner.stop()

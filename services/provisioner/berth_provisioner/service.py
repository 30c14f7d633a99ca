"""The provisioner: its use cases by resource, over one context (DB, events, operations,
backends), shared by the HTTP API (api.py) and the bus commands (commands.py)."""

from __future__ import annotations

from berth_provisioner.clusters import Clusters
from berth_provisioner.context import Context
from berth_provisioner.group_snapshots import GroupSnapshots
from berth_provisioner.quotas import Quotas
from berth_provisioner.snapshots import Snapshots
from berth_provisioner.volume_ops import VolumeOps
from berth_provisioner.volume_types import VolumeTypes
from berth_provisioner.volumes import Volumes
from berth_shared.db import BusTables, Database, EventWriter, OutboxRelay
from berth_shared.operations import OperationRunner

SERVICE = "provisioner"


class Provisioner:
    def __init__(
        self,
        db: Database,
        tables: BusTables,
        relay: OutboxRelay | None,
        runner: OperationRunner,
        *,
        default_quota_volumes: int,
        default_quota_gigabytes: int,
    ) -> None:
        self.db = db
        self.tables = tables
        self.relay = relay
        self.runner = runner
        ctx = Context(db, EventWriter(SERVICE, tables, relay), runner, (default_quota_volumes, default_quota_gigabytes))
        self.ctx = ctx
        self.volumes = Volumes(ctx)
        self.volume_ops = VolumeOps(ctx)
        self.snapshots = Snapshots(ctx)
        self.group_snapshots = GroupSnapshots(ctx)
        self.clusters = Clusters(ctx)
        self.volume_types = VolumeTypes(ctx)
        self.quotas = Quotas(ctx)

    async def close(self) -> None:
        """Drop the backends' connections (Ceph: each holds a librados client)."""
        await self.ctx.close()

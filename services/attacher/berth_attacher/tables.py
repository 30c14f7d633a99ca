"""The attacher's schema. Only this service reads or writes these tables."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Integer, MetaData, String, Table, Text, UniqueConstraint

from berth_shared.db import UTCDateTime, add_bus_tables, timestamp

metadata = MetaData()
bus_tables = add_bus_tables(metadata)


nodes = Table(
    "nodes",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("state", String(24), nullable=False),
    Column("state_reason", Text, nullable=True),
    Column("zone", String(128), nullable=True),
    Column("boot_id", String(64), nullable=True),
    Column("last_heartbeat_at", UTCDateTime(), nullable=True),
    Column("staged", JSON, nullable=False, default=list),
    # The node's max_volumes_per_node (its heartbeat says): 0 = no limit.
    Column("max_volumes", Integer, nullable=False, default=0, server_default="0"),
    # Signals from outside the node (watcher, Kubernetes); None = not reported.
    Column("ready", Boolean, nullable=True),
    Column("out_of_service", Boolean, nullable=True),
    Column("fence_epoch", Integer, nullable=False, default=0),
    Column("fenced_at", UTCDateTime(), nullable=True),
    Column("tainted", Boolean, nullable=False, default=False),
    timestamp("created_at"),
    timestamp("updated_at"),
)

attachments = Table(
    "attachments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("volume_id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False),
    Column("node_id", String(128), nullable=False, index=True),
    Column("cluster_id", String(64), nullable=False),
    Column("backend", String(32), nullable=False),
    # Kept so a fence can reach the storage even while the provisioner is down.
    Column("backend_config", JSON, nullable=False),
    Column("access_mode", String(32), nullable=False),
    Column("readonly", Boolean, nullable=False),
    # attached: the node may use it; released: fenced away, waiting for the CO to unpublish.
    Column("state", String(16), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("publish_context", JSON, nullable=False),
    timestamp("created_at"),
    timestamp("updated_at"),
    UniqueConstraint("volume_id", "node_id", name="uq_attachments_volume_node"),
)

# The highest generation ever granted per volume survives detach, so a generation
# is never reused (a stale node cannot mistake a new grant for its old one).
volume_generations = Table(
    "volume_generations",
    metadata,
    Column("volume_id", String(64), primary_key=True),
    Column("generation", Integer, nullable=False),
)

fences = Table(
    "fences",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("node_id", String(128), nullable=False, index=True),
    Column("epoch", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    # cluster id -> what was cut there (loop devices, blocklisted addresses...)
    Column("results", JSON, nullable=False, default=dict),
    # cluster id -> [backend, config, volume ids, client addresses]: enough to redo or undo it.
    Column("targets", JSON, nullable=False, default=dict),
    # Run by the shared operation runner (berth_shared.operations): leased to one replica,
    # claimed again on every attempt (counted), taken over when its owner's lease ran out.
    Column("owner", String(128), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    timestamp("created_at"),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("unfenced_at", UTCDateTime(), nullable=True),
    UniqueConstraint("node_id", "epoch", name="uq_fences_node_epoch"),
)

"""The provisioner's schema. Only this service reads or writes these tables."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from berth_shared.db import UTCDateTime, add_bus_tables, timestamp

metadata = MetaData()
bus_tables = add_bus_tables(metadata)


volume_types = Table(
    "volume_types",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("description", Text, nullable=False, default=""),
    timestamp("created_at"),
)

clusters = Table(
    "clusters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("backend", String(32), nullable=False),
    Column("config", JSON, nullable=False),
    Column("volume_types", JSON, nullable=False),
    Column("zone", String(128), nullable=False),
    Column("capacity_gib", Integer, nullable=False),
    Column("overcommit_ratio", Float, nullable=False),
    Column("free_floor_pct", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("allowed_tenants", JSON, nullable=True),
    # Maintained with conditional UPDATEs so concurrent creates cannot overshoot.
    Column("provisioned_gib", Integer, nullable=False, default=0),
    Column("volume_count", Integer, nullable=False, default=0),
    timestamp("created_at"),
    timestamp("updated_at"),
)

volumes = Table(
    "volumes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("size_gib", Integer, nullable=False),
    Column("volume_type", String(128), nullable=False),
    Column("zone", String(128), nullable=False),
    Column("cluster_id", String(64), ForeignKey("clusters.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("source_snapshot_id", String(64), nullable=True),
    Column("source_volume_id", String(64), nullable=True),
    timestamp("created_at"),
    timestamp("updated_at"),
    # The name is the idempotency key: one volume per (tenant, name).
    UniqueConstraint("tenant", "name", name="uq_volumes_tenant_name"),
    Index("ix_volumes_tenant_id", "tenant", "id"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("volume_id", String(64), nullable=False, index=True),
    Column("size_gib", Integer, nullable=False),
    Column("cluster_id", String(64), ForeignKey("clusters.id"), nullable=False),
    Column("status", String(16), nullable=False),
    # Set for a group snapshot's member: it is made and deleted only with its group.
    Column("group_snapshot_id", String(64), nullable=True, index=True),
    timestamp("created_at"),
    timestamp("updated_at"),
    UniqueConstraint("tenant", "name", name="uq_snapshots_tenant_name"),
)

group_snapshots = Table(
    "group_snapshots",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    # Sorted: with the name, what makes a repeated create the same request.
    Column("volume_ids", JSON, nullable=False),
    Column("cluster_id", String(64), ForeignKey("clusters.id"), nullable=False),
    Column("status", String(16), nullable=False),
    timestamp("created_at"),
    timestamp("updated_at"),
    # The name is the idempotency key: one group snapshot per (tenant, name).
    UniqueConstraint("tenant", "name", name="uq_group_snapshots_tenant_name"),
)

quotas = Table(
    "quotas",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("volumes", Integer, nullable=False),
    Column("gigabytes", Integer, nullable=False),
    # Usage counts reservations too, so the limit holds while creates are in flight.
    Column("used_volumes", Integer, nullable=False, default=0),
    Column("used_gigabytes", Integer, nullable=False, default=0),
)

operations = Table(
    "operations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("resource_id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("params", JSON, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    # A replica owns a pending operation while its lease runs; another takes over after.
    Column("owner", String(128), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
    timestamp("created_at"),
    timestamp("updated_at"),
)

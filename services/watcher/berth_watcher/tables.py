"""The watcher's schema. Only this service reads or writes these tables."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from berth_shared.db import UTCDateTime, add_bus_tables, timestamp

metadata = MetaData()
bus_tables = add_bus_tables(metadata)

# One row: who leads the jobs, with an epoch that only grows. Every action checks the epoch
# in its own transaction, so a leader that lost its lease (paused, partitioned) cannot act.
leadership = Table(
    "leadership",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("epoch", Integer, nullable=False),
    Column("holder", String(255), nullable=False),
    timestamp("since"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("job", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("partial", Boolean, nullable=False, default=False),
    Column("requested_by", String(128), nullable=False),
    timestamp("requested_at"),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("owner", String(255), nullable=True),
    Column("epoch", Integer, nullable=True),
    Column("sources", JSON, nullable=False, default=list),
    Column("findings_opened", Integer, nullable=False, default=0),
    Column("findings_resolved", Integer, nullable=False, default=0),
    Column("findings_open", Integer, nullable=False, default=0),
    Column("actions", JSON, nullable=False, default=list),
    Column("error", Text, nullable=True),
    Column("summary", JSON, nullable=False, default=dict),
    Index("ix_runs_job_requested", "job", "requested_at"),
    Index("ix_runs_status", "status"),
)

# What a complete run saw that is not (yet) a finding: its grace period is still running.
sightings = Table(
    "sightings",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("kind", String(32), nullable=False, index=True),
    Column("scope", String(128), nullable=False),
    timestamp("first_seen_at"),
    Column("last_seen_at", UTCDateTime(), nullable=False),
)

findings = Table(
    "findings",
    metadata,
    Column("id", String(64), primary_key=True),
    # The finding's identity (kind, cluster, resource); unique among the unresolved ones.
    Column("key", String(255), nullable=False, index=True),
    Column("open_key", String(255), nullable=True, unique=True),
    Column("kind", String(32), nullable=False),
    Column("scope", String(128), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("tenant", String(64), nullable=True),
    Column("cluster_id", String(64), nullable=True),
    Column("resource_kind", String(16), nullable=False),
    Column("resource_id", String(255), nullable=False),
    Column("summary", Text, nullable=False),
    Column("advice", Text, nullable=False),
    Column("action", String(16), nullable=False),
    # An admin asked for this action (finding.quarantine), whatever the policy says.
    Column("requested_action", String(16), nullable=True),
    Column("details", JSON, nullable=False, default=dict),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("confirmed_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    Column("resolution", Text, nullable=True),
    Column("run_id", String(64), nullable=False),
    Index("ix_findings_state_kind", "state", "kind"),
    Index("ix_findings_tenant", "tenant"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("finding_id", String(64), nullable=True, index=True),
    Column("finding_kind", String(32), nullable=True),
    Column("cluster_id", String(64), nullable=False),
    Column("backend", String(32), nullable=False),
    Column("object_kind", String(16), nullable=False),
    Column("object_id", String(128), nullable=False),
    # One live quarantine per object: set while not restored or purged.
    Column("open_key", String(255), nullable=True, unique=True),
    Column("tenant", String(64), nullable=True),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    # quarantining -> quarantined -> (restoring -> restored | purging -> purged); failed.
    Column("state", String(16), nullable=False, index=True),
    Column("reason", Text, nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("epoch", Integer, nullable=False),
    timestamp("quarantined_at"),
    Column("purge_after", UTCDateTime(), nullable=False),
    Column("restored_at", UTCDateTime(), nullable=True),
    Column("purged_at", UTCDateTime(), nullable=True),
    Column("error", Text, nullable=True),
)

qos_policies = Table(
    "qos_policies",
    metadata,
    Column("volume_type", String(128), primary_key=True),
    Column("spec", JSON, nullable=False),
    timestamp("updated_at"),
)

# Per volume: the limits wanted and held, and the last IO sample (for the load's rate).
qos_state = Table(
    "qos_state",
    metadata,
    Column("volume_id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("cluster_id", String(64), nullable=False),
    Column("volume_type", String(128), nullable=False),
    Column("size_gib", Integer, nullable=False),
    Column("wanted", JSON, nullable=False),
    Column("applied", JSON, nullable=False),
    Column("enforced", Boolean, nullable=False),
    Column("detail", Text, nullable=False),
    Column("sample", JSON, nullable=True),
    Column("load", JSON, nullable=True),
    Column("saturated", Boolean, nullable=False, default=False),
    # When the storage was last read back (drift checks rotate through the volumes).
    Column("checked_at", UTCDateTime(), nullable=True, index=True),
    timestamp("updated_at"),
)

usage_samples = Table(
    "usage_samples",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("key", String(128), nullable=False),
    Column("volumes", Integer, nullable=False),
    Column("provisioned_bytes", BigInteger, nullable=False),
    Column("used_bytes", BigInteger, nullable=False),
    Column("capacity_bytes", BigInteger, nullable=True),
    Column("growth_bytes_per_day", Float, nullable=True),
    Index("ix_usage_scope_key_at", "scope", "key", "at"),
)

# The latest forecast per cluster (the history is usage_samples).
forecasts = Table(
    "forecasts",
    metadata,
    Column("cluster_id", String(64), primary_key=True),
    Column("data", JSON, nullable=False),
    timestamp("at"),
)

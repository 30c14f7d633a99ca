"""The alerts service's schema. Only this service reads or writes these tables.

- `alerts`: one row per fingerprint, the latest state an ingest or event told;
- `alert_groups` / `group_members`: the notification groups (route x receiver x group
  labels) with their timers, and which alerts changed since the group last notified;
- `deliveries`: the persisted delivery queue, one row per notification, unique by its
  dedup key (group, receiver, alert-set, state);
- `silences`, `rejected_payloads` (malformed ingests kept for inspection);
- `grafana_instances`, `dashboard_syncs`: the Grafana registry and what was pushed where.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text

from berth_shared.db import UTCDateTime, add_bus_tables, timestamp

metadata = MetaData()
bus_tables = add_bus_tables(metadata)
_ID = BigInteger().with_variant(Integer, "sqlite")

alerts = Table(
    "alerts",
    metadata,
    Column("fingerprint", String(32), primary_key=True),
    Column("labels", JSON, nullable=False),
    Column("annotations", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=True),
    Column("source", String(32), nullable=False),
    Column("generator_url", Text, nullable=True),
    Column("tenant", String(64), nullable=True, index=True),
    Column("oneshot", Boolean, nullable=False, default=False),
    # Rules (index:equal-hash) this alert inhibits while it fires; NULL when none.
    Column("inhibits", JSON, nullable=True),
    Column("inhibit_source", Boolean, nullable=False, default=False),
    # When the current state was first received: the start of ingest-to-messenger latency.
    Column("changed_at", UTCDateTime(), nullable=False),
    timestamp("updated_at"),
    Index("ix_alerts_expiry", "status", "ends_at"),
    Index("ix_alerts_inhibit", "inhibit_source", "status"),
)

alert_groups = Table(
    "alert_groups",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("route_id", String(255), nullable=False),
    Column("receiver", String(128), nullable=False),
    Column("group_labels", JSON, nullable=False),
    # Next flush: set when a member changed (group_wait, then group_interval); NULL: idle.
    Column("due_at", UTCDateTime(), nullable=True, index=True),
    Column("repeat_at", UTCDateTime(), nullable=True, index=True),
    Column("last_notified_at", UTCDateTime(), nullable=True),
    # No notification before this (group_interval after the last one): where a change waits.
    Column("hold_until", UTCDateTime(), nullable=True),
    Column("notifications", Integer, nullable=False, default=0),
    timestamp("created_at"),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", String(32), primary_key=True),
    Column("fingerprint", String(32), primary_key=True, index=True),
    Column("pending", Boolean, nullable=False, default=True),
    # What the receiver was last told of this alert: "firing@<starts_at>" / "resolved@...".
    Column("notified", String(64), nullable=True),
    Index("ix_members_pending", "group_id", "pending"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("dedup_key", String(64), nullable=False, unique=True),
    Column("group_id", String(32), nullable=False, index=True),
    Column("receiver", String(128), nullable=False),
    # pending -> sending -> delivered | failed | expired | collapsed (into a later one)
    Column("state", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("alert_count", Integer, nullable=False),
    # How many of payload["alerts"] reached the receiver: a retry or a restart sends the rest.
    Column("alerts_sent", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(255), nullable=True),
    Column("claim_until", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("collapsed_into", _ID, nullable=True),
    # The oldest change it tells: ingest-to-messenger latency starts there.
    Column("oldest_change_at", UTCDateTime(), nullable=False),
    timestamp("created_at"),
    Column("finished_at", UTCDateTime(), nullable=True),
    Index("ix_deliveries_queue", "receiver", "state", "next_attempt_at"),
    Index("ix_deliveries_finished", "finished_at"),  # the history's pruning
)

silences = Table(
    "silences",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("matchers", JSON, nullable=False),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=False, index=True),
    Column("created_by", String(255), nullable=False),
    Column("comment", Text, nullable=False),
    # A tenant's silence only ever matches that tenant's alerts; NULL: an admin's, any tenant.
    Column("tenant", String(64), nullable=True),
    timestamp("created_at"),
    timestamp("updated_at"),
)

rejected_payloads = Table(
    "rejected_payloads",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("errors", JSON, nullable=False),
    Column("content_type", String(255), nullable=True),
    Column("body", Text, nullable=False),
    Column("body_bytes", Integer, nullable=False),
    Column("tenant", String(64), nullable=True),
    timestamp("received_at"),
)

grafana_instances = Table(
    "grafana_instances",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("url", Text, nullable=False),
    Column("org_id", Integer, nullable=False),
    # A service-account token: never returned by the API, never logged.
    Column("token", Text, nullable=False),
    Column("folder_uid", String(40), nullable=False),
    Column("folder_title", String(255), nullable=False),
    # Template variables for this instance (datasource uid, cluster list, ...).
    Column("variables", JSON, nullable=False),
    timestamp("created_at"),
    timestamp("updated_at"),
)

dashboard_syncs = Table(
    "dashboard_syncs",
    metadata,
    Column("instance", String(128), primary_key=True),
    Column("uid", String(40), primary_key=True),
    Column("content_hash", String(64), nullable=True),
    Column("remote_version", Integer, nullable=True),
    # synced | unchanged | drift_repaired | error
    Column("outcome", String(32), nullable=False),
    Column("message", Text, nullable=True),
    Column("synced_at", UTCDateTime(), nullable=True),
    timestamp("checked_at"),
)

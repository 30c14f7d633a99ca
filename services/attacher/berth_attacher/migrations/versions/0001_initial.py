"""initial

Revision ID: 0001
Revises:
Create Date: 2026-11-27 16:15:24.353021
"""

import sqlalchemy as sa
from alembic import op

from berth_shared.db import create_bus_tables, drop_bus_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("volume_id", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("cluster_id", sa.String(length=64), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("backend_config", sa.JSON(), nullable=False),
        sa.Column("access_mode", sa.String(length=32), nullable=False),
        sa.Column("readonly", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("publish_context", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("volume_id", "node_id", name="uq_attachments_volume_node"),
    )
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attachments_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_attachments_volume_id"), ["volume_id"], unique=False)

    op.create_table(
        "fences",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unfenced_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("node_id", "epoch", name="uq_fences_node_epoch"),
    )
    with op.batch_alter_table("fences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fences_node_id"), ["node_id"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("zone", sa.String(length=128), nullable=True),
        sa.Column("boot_id", sa.String(length=64), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("staged", sa.JSON(), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=True),
        sa.Column("out_of_service", sa.Boolean(), nullable=True),
        sa.Column("fence_epoch", sa.Integer(), nullable=False),
        sa.Column("fenced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tainted", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    create_bus_tables()
    op.create_table(
        "volume_generations",
        sa.Column("volume_id", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("volume_id"),
    )


def downgrade() -> None:
    op.drop_table("volume_generations")
    drop_bus_tables()
    op.drop_table("nodes")
    with op.batch_alter_table("fences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fences_node_id"))

    op.drop_table("fences")
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attachments_volume_id"))
        batch_op.drop_index(batch_op.f("ix_attachments_node_id"))

    op.drop_table("attachments")

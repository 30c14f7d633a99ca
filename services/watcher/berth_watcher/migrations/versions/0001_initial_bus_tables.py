"""initial: bus tables

Revision ID: 0001
Revises:
Create Date: 2026-11-27 16:08:16.345026
"""

from berth_shared.db import create_bus_tables, drop_bus_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_bus_tables()


def downgrade() -> None:
    drop_bus_tables()

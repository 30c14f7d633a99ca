"""fences.attempts and fences.error: the shared operation runner's columns

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 15:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fences", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fences", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("attempts")

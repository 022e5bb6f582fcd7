"""Fusion of nearby reports: incidents.fused_into.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("fused_into", sa.String(64), nullable=True))
        batch.create_index("ix_incidents_fused_into", ["fused_into"])


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_index("ix_incidents_fused_into")
        batch.drop_column("fused_into")

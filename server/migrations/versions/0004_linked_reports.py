"""Linked reports: enc_outbox.linked_to, the alert a fused report joins (sent to the ENC
as an N3 instead of an N1).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enc_outbox") as batch:
        batch.add_column(sa.Column("linked_to", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enc_outbox") as batch:
        batch.drop_column("linked_to")

"""Street addresses: devices.address, when it was set (address_at) and which of those
settings the ENC confirmed (address_sent_at), for the N4 that carries it to the ENC.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("address", sa.String(200), nullable=True))
        batch.add_column(sa.Column("address_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("address_sent_at", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("address_sent_at")
        batch.drop_column("address_at")
        batch.drop_column("address")

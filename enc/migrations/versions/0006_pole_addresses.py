"""Pole addresses (N4): the street address of each device as the server's registry sent
it, shown with that device's alerts.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enc_pole_addresses",
        sa.Column("device_uid", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(200), nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("server_kid", sa.String(16), nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("enc_pole_addresses")

"""Initial schema: devices, audit log, monitoring windows, zone broadcasts,
incidents, ENC outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(64), nullable=False, unique=True),
        sa.Column("kid", sa.LargeBinary(8), nullable=False, unique=True),
        sa.Column("zone", sa.String(64), nullable=False, index=True),
        sa.Column("lat", sa.Float, nullable=False),
        sa.Column("lon", sa.Float, nullable=False),
        sa.Column("alg", sa.Integer, nullable=False),
        sa.Column("key_sealed", sa.LargeBinary, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("blocked", sa.Boolean, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("last_b1_ts", sa.BigInteger, nullable=True),
        sa.Column("last_b1_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("confirmed_epoch", sa.BigInteger, nullable=True),
        sa.Column("confirmed_at", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False, index=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False, index=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_table(
        "monitoring_windows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("zone", sa.String(64), nullable=False, index=True),
        sa.Column("opens_at", sa.BigInteger, nullable=False),
        sa.Column("closes_at", sa.BigInteger, nullable=False),
        sa.Column("opened_by", sa.String(128), nullable=False),
        sa.Column("closed_by", sa.String(128), nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False, index=True),
    )
    op.create_table(
        "zone_broadcasts",
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("announced_until", sa.BigInteger, nullable=True),
        sa.Column("announced_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kid", sa.LargeBinary(8), nullable=False, index=True),
        sa.Column("cid", sa.LargeBinary(16), nullable=False),
        sa.Column("device_uid", sa.String(64), nullable=False, index=True),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("lat", sa.Float, nullable=False),
        sa.Column("lon", sa.Float, nullable=False),
        sa.Column("alt", sa.Float, nullable=True),
        sa.Column("acc", sa.Float, nullable=True),
        sa.Column("coords_src", sa.String(8), nullable=False),
        sa.Column("photo", sa.LargeBinary, nullable=False),
        sa.Column("device_score", sa.Float, nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("captured_at", sa.BigInteger, nullable=False),
        sa.Column("td", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False, index=True),
        sa.Column("server_score", sa.Float, nullable=True),
        sa.Column("uncertain", sa.Boolean, nullable=True),
        sa.Column("decision", sa.String(16), nullable=True, index=True),
        sa.Column("decision_reason", sa.Text, nullable=True),
        sa.Column("decided_at", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "enc_outbox",
        sa.Column(
            "incident_id",
            sa.String(64),
            sa.ForeignKey("incidents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("lease_until", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("delivered_at", sa.BigInteger, nullable=True),
        sa.Column("tenc", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_enc_outbox_due", "enc_outbox", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_enc_outbox_due", "enc_outbox")
    for table in (
        "enc_outbox",
        "incidents",
        "zone_broadcasts",
        "monitoring_windows",
        "audit_log",
        "devices",
    ):
        op.drop_table(table)

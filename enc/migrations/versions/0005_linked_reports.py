"""Linked reports (N3): reports the server fused into an alert, and the labels of
another kind they add to it.

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
    op.create_table(
        "enc_linked_reports",
        sa.Column("report_id", sa.String(64), primary_key=True),
        sa.Column(
            "incident_id",
            sa.String(64),
            sa.ForeignKey("enc_alerts.incident_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("server_kid", sa.String(16), nullable=False),
        sa.Column("device_uid", sa.String(64), nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("coords_sealed", sa.LargeBinary, nullable=False),
        sa.Column("coord_src", sa.String(8), nullable=False),
        sa.Column("captured_at", sa.BigInteger, nullable=False),
        sa.Column("sent_at", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("photo_sealed", sa.LargeBinary, nullable=False),
        sa.Column("photo_size", sa.Integer, nullable=False),
        sa.Column("photo_sha256", sa.String(64), nullable=False),
    )
    op.create_index("ix_enc_linked_reports_incident_id", "enc_linked_reports", ["incident_id"])
    with op.batch_alter_table("enc_alerts") as batch:
        batch.add_column(sa.Column("linked_labels", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enc_alerts") as batch:
        batch.drop_column("linked_labels")
    op.drop_table("enc_linked_reports")

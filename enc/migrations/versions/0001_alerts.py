"""Alerts, their photos, and the append-only audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "enc_alerts",
        sa.Column("incident_id", sa.String(64), primary_key=True),
        sa.Column("server_kid", sa.String(16), nullable=False),
        sa.Column("device_uid", sa.String(64), nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("lat", sa.Float, nullable=False),
        sa.Column("lon", sa.Float, nullable=False),
        sa.Column("alt", sa.Float, nullable=True),
        sa.Column("acc", sa.Float, nullable=True),
        sa.Column("coord_src", sa.String(8), nullable=False),
        sa.Column("captured_at", sa.BigInteger, nullable=False),
        sa.Column("sent_at", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("photo_size", sa.Integer, nullable=False),
        sa.Column("photo_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_at", sa.BigInteger, nullable=False),
        sa.Column("taken_by", sa.String(64), nullable=True),
    )
    op.create_index("ix_enc_alerts_device_uid", "enc_alerts", ["device_uid"])
    op.create_index("ix_enc_alerts_received_at", "enc_alerts", ["received_at"])
    op.create_index("ix_enc_alerts_status", "enc_alerts", ["status"])
    op.create_table(
        "enc_photos",
        sa.Column(
            "incident_id", sa.String(64), sa.ForeignKey("enc_alerts.incident_id"), primary_key=True
        ),
        sa.Column("jpeg", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "enc_audit",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("incident_id", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_enc_audit_incident_id", "enc_audit", ["incident_id"])
    # The audit trail is append-only in the database itself, not only by convention.
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER enc_audit_no_{event.lower()} BEFORE {event} ON enc_audit "
                "BEGIN SELECT RAISE(ABORT, 'enc_audit is append-only'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION enc_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'enc_audit is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER enc_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            "ON enc_audit FOR EACH STATEMENT EXECUTE FUNCTION enc_audit_append_only()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER enc_audit_append_only ON enc_audit")
        op.execute("DROP FUNCTION enc_audit_append_only()")
    op.drop_table("enc_audit")
    op.drop_table("enc_photos")
    op.drop_table("enc_alerts")

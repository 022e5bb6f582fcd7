"""CAP messages, their deliveries to recipients (the retry queue), the cursor they are
made from, and the ENC's own settings.

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

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "enc_cap_messages",
        sa.Column("identifier", sa.String(128), primary_key=True),
        sa.Column("incident_id", sa.String(64), nullable=False),
        sa.Column("audit_id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("sent_at", sa.BigInteger, nullable=False),
        sa.Column("msg_type", sa.String(16), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_enc_cap_messages_incident_id", "enc_cap_messages", ["incident_id"])
    op.create_table(
        "enc_cap_deliveries",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "identifier",
            sa.String(128),
            sa.ForeignKey("enc_cap_messages.identifier", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_at", sa.BigInteger, nullable=False),
        sa.Column("delivered_at", sa.BigInteger, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.UniqueConstraint(
            "identifier", "recipient", name="uq_enc_cap_deliveries_identifier_recipient"
        ),
    )
    op.create_index("ix_enc_cap_deliveries_identifier", "enc_cap_deliveries", ["identifier"])
    op.create_index("ix_enc_cap_deliveries_recipient", "enc_cap_deliveries", ["recipient"])
    op.create_table(
        "enc_cap_cursor",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("audit_id", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "enc_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("enc_settings")
    op.drop_table("enc_cap_cursor")
    op.drop_table("enc_cap_deliveries")
    op.drop_table("enc_cap_messages")

"""Photos and positions sealed at rest: enc_alerts.coords_sealed; lat and lon become
nullable (NULL once sealed). The rows are sealed by the ENC when its store opens
(``AlertStore.seal_clear_alerts``): a migration has no key.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enc_alerts") as batch:
        batch.add_column(sa.Column("coords_sealed", sa.LargeBinary(), nullable=True))
        for column in ("lat", "lon"):
            batch.alter_column(column, existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    # Sealed rows have no position in clear: a downgrade would lose them.
    raise NotImplementedError("alerts sealed at rest cannot be downgraded in place")

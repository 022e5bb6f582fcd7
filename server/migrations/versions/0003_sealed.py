"""Photos and coordinates sealed at rest: incidents.coords_sealed; lat, lon, alt and acc
become nullable (NULL once sealed). The rows themselves are sealed by the server at
start-up (``Store.seal_clear_incidents``): a migration has no key.

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
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("coords_sealed", sa.LargeBinary(), nullable=True))
        for column in ("lat", "lon"):
            batch.alter_column(column, existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    # Sealed rows have no coordinates in clear: a downgrade would lose them.
    raise NotImplementedError("incidents sealed at rest cannot be downgraded in place")

"""pack_versions.calibration: the relevance threshold calibrated on the tenant's eval questions, with its figures

Revision ID: 0016
Revises: 0015

No backfill: a version built before this revision has none (the tenant's policy or the default 0.45 applies);
`switchboard eval --calibrate` computes one for it.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pack_versions") as batch:
        batch.add_column(sa.Column("calibration", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pack_versions") as batch:
        batch.drop_column("calibration")

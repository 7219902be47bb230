"""pack_versions.term_stats: token document frequencies of a version's chunks (query token weighting)

Revision ID: 0004
Revises: 0003

No backfill: a version built before this revision has none, and app/knowledge/termstats.py counts them from its
chunks when it is first read.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pack_versions") as batch:
        batch.add_column(sa.Column("term_stats", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pack_versions") as batch:
        batch.drop_column("term_stats")

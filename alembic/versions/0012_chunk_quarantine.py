"""chunks.quarantine: a chunk flagged as suspected prompt injection at ingestion, kept out of the vector index

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, nullable: existing chunks were indexed before the scan existed (retrieval rescans them).
    op.add_column("chunks", sa.Column("quarantine", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("chunks", "quarantine")

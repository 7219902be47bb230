"""contacts.consent_status / consent_updated_at / consent_source: a contact's consent and opt-out

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild on SQLite); existing contacts' consent is unknown.
    op.add_column("contacts", sa.Column("consent_status", sa.String(16), nullable=False, server_default="unknown"))
    op.add_column("contacts", sa.Column("consent_updated_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("contacts", sa.Column("consent_source", sa.String(64), nullable=True))


def downgrade() -> None:
    for column in ("consent_source", "consent_updated_at", "consent_status"):
        op.drop_column("contacts", column)  # plain DROP COLUMN (SQLite >= 3.35), no table rebuild

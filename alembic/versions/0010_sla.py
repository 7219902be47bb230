"""escalations.sla_state / sla_due_at / sla_breached_at: the tenant's first-response target per escalation

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild on SQLite): all nullable, existing escalations have no SLA.
    op.add_column("escalations", sa.Column("sla_state", sa.String(16), nullable=True))
    op.add_column("escalations", sa.Column("sla_due_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("escalations", sa.Column("sla_breached_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ("sla_breached_at", "sla_due_at", "sla_state"):
        op.drop_column("escalations", column)  # plain DROP COLUMN (SQLite >= 3.35), no table rebuild

"""tenants.plan / plan_overrides (plans and quotas, app/tenants/plans.py); messages (tenant_id, created_at) index
for the monthly usage count

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild on SQLite): nullable, existing tenants are on DEFAULT_PLAN.
    op.add_column("tenants", sa.Column("plan", sa.String(32), nullable=True))
    op.add_column("tenants", sa.Column("plan_overrides", sa.JSON(), nullable=True))
    op.create_index("ix_messages_tenant_created", "messages", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_tenant_created", table_name="messages")
    op.drop_column("tenants", "plan_overrides")  # plain DROP COLUMN (SQLite >= 3.35), no table rebuild
    op.drop_column("tenants", "plan")

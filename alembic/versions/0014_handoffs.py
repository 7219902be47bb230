"""handoffs (takeover to release, for agent handling time) and escalations(tenant_id, created_at) for analytics

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "handoffs",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("escalation_id", sa.String(length=32), nullable=True),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(length=200), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_handoffs_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"],
                                name=op.f("fk_handoffs_conversation_id_conversations"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoffs")),
    )
    op.create_index("ix_handoffs_tenant_ended", "handoffs", ["tenant_id", "ended_at"])
    op.create_index("ix_handoffs_conversation_ended", "handoffs", ["conversation_id", "ended_at"])
    op.create_index("ix_handoffs_escalation_id", "handoffs", ["escalation_id"])
    # The analytics read a tenant's messages (index ix_messages_tenant_created, 0013) and escalations by time.
    op.create_index("ix_escalations_tenant_created", "escalations", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_escalations_tenant_created", "escalations")
    op.drop_table("handoffs")

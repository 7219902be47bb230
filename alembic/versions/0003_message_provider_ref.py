"""messages.provider_ref: the provider's id of an outbound message, indexed for delivery receipts

Revision ID: 0003
Revises: 0002
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("provider_ref", sa.String(length=200), nullable=True))
        batch.create_index("ix_messages_provider_ref", ["tenant_id", "channel", "provider_ref"])
    # Backfill from where senders used to record it (meta.provider_id).
    conn = op.get_bind()
    messages = sa.table("messages", sa.column("id", sa.String), sa.column("direction", sa.String),
                        sa.column("meta", sa.JSON), sa.column("provider_ref", sa.String))
    rows = conn.execute(sa.select(messages.c.id, messages.c.meta).where(messages.c.direction == "out")).all()
    for message_id, meta in rows:
        if isinstance(meta, str):
            meta = json.loads(meta)
        ref = (meta or {}).get("provider_id")
        if ref:
            conn.execute(sa.update(messages).where(messages.c.id == message_id).values(provider_ref=str(ref)))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_provider_ref")
        batch.drop_column("provider_ref")

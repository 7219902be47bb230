"""passage_vectors: the grounding check's embeddings of a passage's units, kept across restarts and processes

Revision ID: 0018
Revises: 0017

A passage's first citation embeds its sentences, clauses and pairs (~30 model inputs, ~0.2 s of CPU); kept here,
a restarted process, an answering process or another replica reads them instead (app/assistant/passage_units.py).
One row per tenant, model and passage text digest. On Postgres the table gets the tenant policy of 0017 (its
default privileges already grant the app role its rows). No backfill: rows appear as passages are cited.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "tenant_isolation"
RULE = "tenant_id = current_setting('switchboard.tenant_id', true)"
CROSS = "coalesce(current_setting('switchboard.cross_tenant', true), '') <> ''"


def upgrade() -> None:
    op.create_table(
        "passage_vectors",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vectors", sa.LargeBinary(), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_passage_vectors_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passage_vectors")),
        sa.UniqueConstraint("tenant_id", "model", "digest", name=op.f("uq_passage_vectors_tenant_id_model_digest")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE passage_vectors ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE passage_vectors FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {POLICY} ON passage_vectors USING ({RULE} OR {CROSS}) "
                   f"WITH CHECK ({RULE} OR {CROSS})")


def downgrade() -> None:
    op.drop_table("passage_vectors")

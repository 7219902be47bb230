"""pack versions: one row per build of a tenant's knowledge pack; vectors cache key on documents; job version

Revision ID: 0002
Revises: 0001
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pack_versions",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("documents", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("embedded", sa.Integer(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_pack_versions_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pack_versions")),
        sa.UniqueConstraint("tenant_id", "version", name=op.f("uq_pack_versions_tenant_id_version")),
    )
    with op.batch_alter_table("pack_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pack_versions_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_pack_versions_job_id"), ["job_id"], unique=False)
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vectors_key", sa.String(length=500), nullable=True))
    with op.batch_alter_table("ingestion_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pack_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("options", sa.JSON(), nullable=False, server_default="{}"))
    _backfill()


def _backfill() -> None:
    """Packs ingested before versions existed get a row per version they have; the live one (the tenant's
    `live_pack_version`, or else its newest) is marked live, and named on the tenant, so retrieval keeps
    reading exactly what it read before."""
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT d.tenant_id, d.pack_version, COUNT(*), t.live_pack_version FROM documents d "
            "JOIN tenants t ON t.id = d.tenant_id GROUP BY d.tenant_id, d.pack_version, t.live_pack_version"
        )
    ).all()
    newest: dict[str, int] = {}
    for tenant_id, version, _, live in rows:
        newest[tenant_id] = live if live is not None else max(version, newest.get(tenant_id, 0))
    now = datetime.now(UTC)
    for tenant_id, version, n, _ in rows:
        conn.execute(
            sa.text(
                "INSERT INTO pack_versions (id, tenant_id, version, status, documents, chunks, embedded, scores, "
                "created_at) VALUES (:id, :t, :v, :s, :n, 0, 0, '{}', :now)"
            ),
            {"id": uuid.uuid4().hex, "t": tenant_id, "v": version, "n": n, "now": now,
             "s": "live" if newest[tenant_id] == version else "ready"},
        )
    for tenant_id, live in newest.items():
        conn.execute(sa.text("UPDATE tenants SET live_pack_version = :v WHERE id = :t"), {"v": live, "t": tenant_id})


def downgrade() -> None:
    with op.batch_alter_table("ingestion_jobs", schema=None) as batch_op:
        batch_op.drop_column("options")
        batch_op.drop_column("pack_version")
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_column("vectors_key")
    with op.batch_alter_table("pack_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pack_versions_job_id"))
        batch_op.drop_index(batch_op.f("ix_pack_versions_tenant_id"))
    op.drop_table("pack_versions")

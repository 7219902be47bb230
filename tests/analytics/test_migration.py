"""Migration 0014 (handoffs, and the indexes the analytics read by) on SQLite and Postgres: the upgraded schema is
what the models declare (alembic's own comparison), and downgrade then upgrade round-trips, keeping the tenants'
other rows."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.models import Base
from tests.knowledge.test_migration import _cfg, empty_db  # noqa: F401  (fixture)

# (messages' ix_messages_tenant_created, which the analytics read too, comes with 0013.)
NEW_INDEXES = {("escalations", "ix_escalations_tenant_created"),
               ("handoffs", "ix_handoffs_tenant_ended"), ("handoffs", "ix_handoffs_conversation_ended"),
               ("handoffs", "ix_handoffs_escalation_id")}


def _indexes(conn: sa.Connection) -> set[tuple[str, str]]:
    inspector = sa.inspect(conn)
    return {(table, ix["name"]) for table in inspector.get_table_names() for ix in inspector.get_indexes(table)
            if ix["name"]}


def test_0014_matches_the_models_and_round_trips(empty_db: str) -> None:  # noqa: F811
    url = empty_db.replace("postgresql://", "postgresql+psycopg://")
    command.upgrade(_cfg(url), "head")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert _indexes(conn) >= NEW_INDEXES
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            mine = [d for d in diff if "handoffs" in repr(d) or "tenant_created" in repr(d)]
            assert mine == [], mine
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO tenants (id, slug, name, persona, policies, created_at) "
                                 "VALUES ('t', 't', 'T', '{}', '{}', CURRENT_TIMESTAMP)"))
        command.downgrade(_cfg(url), "0013")
        with engine.connect() as conn:
            assert "handoffs" not in sa.inspect(conn).get_table_names()
            assert not NEW_INDEXES & _indexes(conn)
            assert conn.execute(sa.text("SELECT COUNT(*) FROM tenants")).scalar() == 1
        command.upgrade(_cfg(url), "head")
        with engine.connect() as conn:
            assert _indexes(conn) >= NEW_INDEXES
    finally:
        engine.dispose()

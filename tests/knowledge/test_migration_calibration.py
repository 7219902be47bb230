"""Migration 0016 (pack_versions.calibration) on SQLite and Postgres: the upgraded schema is what the models
declare, a version's row survives downgrade and upgrade, and its calibration starts empty (null: not calibrated)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.models import Base
from tests.knowledge.test_migration import _cfg, empty_db  # noqa: F401  (fixture)


def _columns(conn: sa.Connection) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns("pack_versions")}


def test_0016_matches_the_models_and_round_trips(empty_db: str) -> None:  # noqa: F811
    url = empty_db.replace("postgresql://", "postgresql+psycopg://")
    command.upgrade(_cfg(url), "head")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert "calibration" in _columns(conn)
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert [d for d in diff if "pack_versions" in repr(d)] == []
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO tenants (id, slug, name, persona, policies, created_at) "
                                 "VALUES ('t', 't', 'T', '{}', '{}', CURRENT_TIMESTAMP)"))
            conn.execute(sa.text("INSERT INTO pack_versions (id, tenant_id, version, status, documents, chunks, "
                                 "embedded, scores, created_at) VALUES ('v', 't', 1, 'live', 1, 1, 1, '{}', "
                                 "CURRENT_TIMESTAMP)"))
        command.downgrade(_cfg(url), "0015")
        with engine.connect() as conn:
            assert "calibration" not in _columns(conn)
        command.upgrade(_cfg(url), "head")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT calibration FROM pack_versions WHERE id = 'v'")).scalar() is None
    finally:
        engine.dispose()

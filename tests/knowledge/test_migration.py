"""Migration 0002 (pack versions) on SQLite and Postgres: upgrade over a pack ingested before versions existed
backfills one row per version and names the live one on the tenant; downgrade and upgrade again round-trip."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from tests.conftest import PG_ADMIN_URL, REPO


def _cfg(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(REPO / "alembic"))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    import psycopg

    name = f"sb_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_backfills_versions_and_round_trips(empty_db: str) -> None:
    url = empty_db.replace("postgresql://", "postgresql+psycopg://")
    command.upgrade(_cfg(url), "0001")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for tenant, live in (("a", None), ("b", 1)):
                conn.execute(
                    sa.text("INSERT INTO tenants (id, slug, name, persona, policies, live_pack_version, created_at) "
                            "VALUES (:t, :t, :t, '{}', '{}', :live, CURRENT_TIMESTAMP)"),
                    {"t": tenant, "live": live},
                )
            for tenant, version, path in (("a", 1, "x.md"), ("a", 2, "x.md"), ("a", 2, "y.md"), ("b", 1, "z.md"),
                                          ("b", 2, "z.md")):
                conn.execute(
                    sa.text("INSERT INTO documents (id, tenant_id, pack_version, path, title, kind, content_hash, "
                            "meta, status, created_at) VALUES (:id, :t, :v, :p, '', 'markdown', 'h', '{}', "
                            "'indexed', CURRENT_TIMESTAMP)"),
                    {"id": uuid.uuid4().hex, "t": tenant, "v": version, "p": path},
                )
        command.upgrade(_cfg(url), "head")
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT tenant_id, version, status, documents FROM pack_versions ORDER BY tenant_id, version")
            ).all()
            result = conn.execute(sa.text("SELECT id, live_pack_version FROM tenants"))
            lives: dict[str, int] = {r[0]: r[1] for r in result}
        assert [tuple(r) for r in rows] == [
            ("a", 1, "ready", 1), ("a", 2, "live", 2), ("b", 1, "live", 1), ("b", 2, "ready", 1)
        ]
        assert lives == {"a": 2, "b": 1}
        command.downgrade(_cfg(url), "0001")
        with engine.connect() as conn:
            assert "pack_versions" not in sa.inspect(conn).get_table_names()
            assert "vectors_key" not in {c["name"] for c in sa.inspect(conn).get_columns("documents")}
        command.upgrade(_cfg(url), "head")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM pack_versions")).scalar() == 4
    finally:
        engine.dispose()


def test_0003_backfills_provider_refs_of_sent_messages(empty_db: str) -> None:
    url = empty_db.replace("postgresql://", "postgresql+psycopg://")
    command.upgrade(_cfg(url), "0002")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO tenants (id, slug, name, persona, policies, created_at) "
                                 "VALUES ('t', 't', 't', '{}', '{}', CURRENT_TIMESTAMP)"))
            conn.execute(sa.text("INSERT INTO contacts (id, tenant_id, channel, external_id, created_at) "
                                 "VALUES ('c', 't', 'whatsapp', '316', CURRENT_TIMESTAMP)"))
            conn.execute(sa.text("INSERT INTO conversations (id, tenant_id, contact_id, channel, mode, created_at) "
                                 "VALUES ('v', 't', 'c', 'whatsapp', 'bot', CURRENT_TIMESTAMP)"))
            for mid, direction, meta in (("sent", "out", '{"provider_id": "wamid.1"}'), ("pending", "out", "{}"),
                                         ("in", "in", '{"kind": "text"}')):
                conn.execute(sa.text(
                    "INSERT INTO messages (id, tenant_id, conversation_id, channel, direction, provider_message_id, "
                    "text, status, meta, created_at) VALUES (:id, 't', 'v', 'whatsapp', :d, :id, '', 'sent', :m, "
                    "CURRENT_TIMESTAMP)"), {"id": mid, "d": direction, "m": meta})
        command.upgrade(_cfg(url), "head")
        with engine.connect() as conn:
            refs = dict(conn.execute(sa.text("SELECT id, provider_ref FROM messages")).all())
        assert refs == {"sent": "wamid.1", "pending": None, "in": None}
        command.downgrade(_cfg(url), "0002")
        command.upgrade(_cfg(url), "head")
    finally:
        engine.dispose()

"""Postgres row-level security (issue 12; app/rls.py, alembic/versions/0017_row_level_security.py).

The tests connect as `postgres`, a superuser, whom RLS never applies to: every check reads and writes through the
app role (`DATABASE_APP_ROLE=switchboard_app`, switched to by `rls.install` on each new connection), and the rows
they check are written beforehand as the superuser, one generated row per table and tenant, straight from the
migrated schema, so a table added later is covered without touching this file."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.orm import Session

from app import rls
from app.db import make_engine
from app.models import Conversation, Tenant
from tests.conftest import PG_ADMIN_URL, REPO, Graph, settings_for

ROLE = "switchboard_app"
SCOPE = "SELECT set_config('switchboard.tenant_id', :t, true), set_config('switchboard.cross_tenant', :c, true)"
# Values a check constraint insists on.
FIXED = {("memberships", "role"): "agent", ("invitations", "role"): "agent"}


def psycopg_url(url: str) -> str:
    return "postgresql+psycopg://" + url.removeprefix("postgresql://")


@pytest.fixture
def app_role(graph: Graph) -> None:
    graph.configure(database_app_role=ROLE)


@pytest.fixture
def as_app(pg_url: str, app_role: None) -> Iterator[Engine]:
    """The application's engine, every connection switched to the app role."""
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def as_superuser(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(psycopg_url(pg_url))
    yield engine
    engine.dispose()


def uncovered(conn: Connection) -> list[str]:
    """Tables of the schema without RLS enabled and forced, without a policy, or out of the app role's reach."""
    rows = conn.execute(text(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
        "       (SELECT count(*) FROM pg_policies p WHERE p.schemaname = n.nspname AND p.tablename = c.relname), "
        "       has_table_privilege(:role, c.oid, 'SELECT, INSERT, UPDATE, DELETE') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version' "
        "ORDER BY c.relname"
    ), {"role": ROLE}).all()
    assert rows, "no table found"
    problems = []
    for name, enabled, forced, policies, granted in rows:
        missing = [what for what, ok in (("RLS enabled", enabled), ("RLS forced", forced),
                                         ("a policy", policies > 0), (f"grants to {ROLE}", granted)) if not ok]
        if missing:
            problems.append(f"{name}: no {', no '.join(missing)}")
    return problems


def test_every_table_has_rls_enabled_forced_and_a_policy_and_the_role_bypasses_nothing(as_superuser: Engine) -> None:
    with as_superuser.connect() as conn:
        assert uncovered(conn) == []
        tenant_tables = set(conn.scalars(text(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND column_name = 'tenant_id'")))
        assert {"messages", "conversations", "escalations", "memberships", "outbox"} <= tenant_tables
        for table in tenant_tables:
            quals = conn.scalars(text("SELECT qual || ' ' || with_check FROM pg_policies WHERE tablename = :t"),
                                 {"t": table}).all()
            assert any("tenant_id" in q and "switchboard.tenant_id" in q for q in quals), table
        role = conn.execute(text("SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = :r"),
                            {"r": ROLE}).one()
        assert tuple(role) == (False, False, False)
        # The migration history is the owner's: the app role only reads it.
        assert conn.scalar(text("SELECT has_table_privilege(:r, 'alembic_version', 'UPDATE')"), {"r": ROLE}) is False


def test_the_coverage_check_names_a_new_tenant_table_without_a_policy(as_superuser: Engine) -> None:
    with as_superuser.connect() as conn, conn.begin() as tx:
        conn.execute(text("CREATE TABLE stray_notes (id text PRIMARY KEY, tenant_id text NOT NULL)"))
        # The default privileges of migration 0017 reach it; RLS does not, and the check says so.
        assert uncovered(conn) == ["stray_notes: no RLS enabled, no RLS forced, no a policy"]
        conn.execute(text("ALTER TABLE stray_notes ENABLE ROW LEVEL SECURITY"))
        conn.execute(text("ALTER TABLE stray_notes FORCE ROW LEVEL SECURITY"))
        assert uncovered(conn) == ["stray_notes: no a policy"]
        tx.rollback()


# ---- rows of every table, for two tenants ---------------------------------------------------------------------

def _value(table: Table, column: Any, tag: str, n: int) -> Any:
    if (table.name, column.name) in FIXED:
        return FIXED[(table.name, column.name)]
    try:
        kind = column.type.python_type
    except NotImplementedError:
        kind = str
    if kind is str:
        length = getattr(column.type, "length", None) or 32
        return (tag + uuid.uuid4().hex)[: max(length, 1)]
    if kind is bool:
        return False
    if kind is int or kind is float:
        return n
    if kind is datetime:
        return datetime.now(UTC)
    if kind is date:
        return datetime.now(UTC).date()
    if kind in (dict, list):
        return {}
    if kind is bytes:
        return bytes([n % 256]) * 4
    return str(n)


def generate_rows(conn: Connection, tenants: list[str]) -> tuple[MetaData, dict[str, dict[str, dict[str, Any]]]]:
    """One row per table and tenant, every NOT NULL column filled and every foreign key pointing at the same
    tenant's row of the parent table. {table: {tenant: row}}."""
    meta = MetaData()
    meta.reflect(conn)
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for n, table in enumerate(meta.sorted_tables):
        if table.name == "alembic_version":
            continue
        for tenant in tenants:
            row = new_row(table, tenant, rows, n) | ({"id": tenant} if table.name == "tenants" else {})
            stored = conn.execute(table.insert().values(row).returning(*table.c)).mappings().one()
            rows.setdefault(table.name, {})[tenant] = dict(stored)
    return meta, rows


def new_row(table: Table, tenant: str, rows: dict[str, dict[str, dict[str, Any]]], n: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in table.columns:
        if column.name == "tenant_id":
            row[column.name] = tenant
        elif column.foreign_keys:
            if column.nullable:
                continue
            target = next(iter(column.foreign_keys)).column
            row[column.name] = rows[target.table.name][tenant][target.name]
        elif column.nullable or column.server_default is not None:
            continue
        else:
            row[column.name] = _value(table, column, tenant[:2], n)
    return row


@pytest.fixture
def two_tenants(as_superuser: Engine) -> Iterator[tuple[str, str, MetaData, dict[str, dict[str, dict[str, Any]]]]]:
    a, b = f"rlsa{uuid.uuid4().hex[:12]}", f"rlsb{uuid.uuid4().hex[:12]}"
    with as_superuser.begin() as conn:
        meta, rows = generate_rows(conn, [a, b])
    yield a, b, meta, rows
    # The session's database is shared: rows made up to fill every column (an outbox entry whose fields are not an
    # event, say) would reach later tests' relays and readers.
    with as_superuser.begin() as conn:
        for table in reversed(meta.sorted_tables):
            for row in rows.get(table.name, {}).values():
                conn.execute(table.delete().where(*key_of(table, row)))


def in_scope(conn: Connection, tenant: str = "", cross: str = "") -> None:
    conn.execute(text(SCOPE), {"t": tenant, "c": cross})


def key_of(table: Table, row: dict[str, Any]) -> Any:
    return [column == row[column.name] for column in table.primary_key.columns]


def rls_refused(as_app: Engine, tenant: str, statement: Any) -> str:
    """The statement fails in the tenant's transaction; the error's message."""
    with as_app.connect() as conn, conn.begin():
        in_scope(conn, tenant)
        with pytest.raises(DBAPIError) as refused:
            conn.execute(statement)
    return str(refused.value.orig)


def visible(conn: Connection, table: Table, tenant: str, rows: dict[str, dict[str, Any]]) -> set[str]:
    """Which of the generated rows of `table` the transaction sees, by their tenant."""
    return {t for t, row in rows.items() if conn.execute(select(table).where(*key_of(table, row))).first()}


def test_each_tenant_table_through_the_app_role(
    as_app: Engine, two_tenants: tuple[str, str, MetaData, dict[str, dict[str, dict[str, Any]]]]
) -> None:
    a, b, meta, rows = two_tenants
    checked = []
    for name, by_tenant in rows.items():
        table = meta.tables[name]
        scope_column = "id" if name == "tenants" else "tenant_id" if "tenant_id" in table.c else None
        with as_app.connect() as conn, conn.begin():
            assert conn.scalar(text("SELECT current_user")) == ROLE
            in_scope(conn, a)
            assert visible(conn, table, a, by_tenant) == {a}, name
            if scope_column is not None:
                seen = set(conn.scalars(select(table.c[scope_column]).distinct()))
                assert seen == {a}, f"{name}: tenant {a} sees rows of {seen - {a}}"
            else:  # users, refresh_tokens: only what the tenant's memberships / logins reach, A's generated one
                assert conn.scalar(select(text("count(*)")).select_from(table)) == 1, name
            # Another tenant's row can be neither changed nor deleted: it is not there.
            first_column = table.primary_key.columns.keys()[0]
            updated = conn.execute(table.update().where(*key_of(table, by_tenant[b]))
                                   .values({first_column: by_tenant[b][first_column]}))
            assert updated.rowcount == 0, name
            assert conn.execute(table.delete().where(*key_of(table, by_tenant[b]))).rowcount == 0, name
        with as_app.connect() as conn, conn.begin():
            assert conn.scalar(select(text("count(*)")).select_from(table)) == 0, f"{name}: visible with no scope"
            in_scope(conn, cross="test")
            assert visible(conn, table, "", by_tenant) == {a, b}, name
        if scope_column is not None and name != "tenants":
            # A row written into B, or A's row moved to B, breaks the policy's WITH CHECK.
            row_for_b = new_row(table, b, rows, 0)
            assert "row-level security" in rls_refused(as_app, a, table.insert().values(row_for_b)), name
            moved = table.update().where(*key_of(table, by_tenant[a])).values(tenant_id=b)
            assert "row-level security" in rls_refused(as_app, a, moved), name
        checked.append(name)
    with as_app.connect() as conn, conn.begin():
        in_scope(conn, cross="test")
        for name, by_tenant in rows.items():  # nothing above reached B's rows
            assert visible(conn, meta.tables[name], "", by_tenant) == {a, b}, name
    assert {"tenants", "users", "refresh_tokens", "messages", "chunks", "outbox", "handoffs"} <= set(checked)


def test_a_tenant_cannot_create_a_tenant_or_rename_itself_into_another(
    as_app: Engine, two_tenants: tuple[str, str, MetaData, dict[str, dict[str, dict[str, Any]]]]
) -> None:
    a, b, meta, _rows = two_tenants
    tenants = meta.tables["tenants"]
    created = tenants.insert().values(id=uuid.uuid4().hex, slug=uuid.uuid4().hex, name="x", persona={},
                                      policies={}, created_at=datetime.now(UTC))
    assert "row-level security" in rls_refused(as_app, a, created)
    assert "row-level security" in rls_refused(as_app, a, tenants.update().where(tenants.c.id == a).values(id=b + "x"))


@pytest.fixture
def without_app_scope() -> Iterator[None]:
    """The application's own scope (app/tenant_scope.py: ORM criteria, Core and flush checks) switched off for
    the test, so what holds is the database's wall alone."""
    from app import tenant_scope

    listeners = [(Session, "do_orm_execute", tenant_scope._scope_statement),
                 (Session, "before_flush", tenant_scope._scope_flush)]
    for target, name, fn in listeners:
        event.remove(target, name, fn)
    try:
        yield
    finally:
        for target, name, fn in listeners:
            event.listen(target, name, fn)


def test_an_orm_query_without_a_tenant_filter_returns_only_the_sessions_tenant(
    as_app: Engine, two_tenants: tuple[str, str, MetaData, dict[str, dict[str, dict[str, Any]]]],
    without_app_scope: None,
) -> None:
    a, b, _meta, rows = two_tenants
    with Session(as_app, info={"tenant_id": a}) as session:
        conversations = session.scalars(select(Conversation)).all()
        assert [c.id for c in conversations] == [rows["conversations"][a]["id"]]
        assert [t.id for t in session.scalars(select(Tenant))] == [a]
        assert session.get(Conversation, rows["conversations"][b]["id"]) is None
        # A write through the ORM into another tenant is refused by the database itself.
        session.add(Conversation(tenant_id=b, contact_id=rows["contacts"][b]["id"], channel="webchat"))
        with pytest.raises(ProgrammingError, match="row-level security"):
            session.flush()
    with Session(as_app, info={"cross_tenant": "test"}) as session:
        assert {a, b} <= set(session.scalars(select(Conversation.tenant_id)))
    with Session(as_app) as session:  # no scope at all
        assert session.scalars(select(Conversation)).all() == []
        assert session.scalars(select(Tenant)).all() == []


def test_the_scope_is_one_statement_per_transaction_and_a_pooled_connection_carries_nothing_on(
    pg_url: str, app_role: None, two_tenants: tuple[str, str, MetaData, dict[str, dict[str, dict[str, Any]]]],
    without_app_scope: None,
) -> None:
    a, _b, _meta, _rows = two_tenants
    engine = rls.install(create_engine(psycopg_url(pg_url), pool_size=1, max_overflow=0), ROLE)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_args: statements.append(statement))
    try:
        with Session(engine, info={"tenant_id": a}) as session:
            assert session.scalar(select(text("count(*)")).select_from(Conversation)) == 1
            session.commit()
            assert session.scalar(text("SELECT current_setting('switchboard.tenant_id')")) == a
            session.commit()
        assert sum("set_config" in s for s in statements) == 2  # one per transaction, nothing else per query
        # The same connection (the pool holds one), next checked out raw: the tenant went with its transaction.
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT 1")) == 1  # health checks keep working
            assert conn.scalar(text("SELECT current_user")) == ROLE
            assert conn.scalar(text("SELECT coalesce(current_setting('switchboard.tenant_id', true), '')")) == ""
            assert conn.scalar(select(text("count(*)")).select_from(Conversation)) == 0
        with Session(engine) as session:  # a session without a scope after a tenant's
            assert session.scalars(select(Tenant)).all() == []
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert engine.pool.size() == 1  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_without_the_role_setting_connections_keep_their_login(pg_url: str, tmp_path: Path) -> None:
    engine = make_engine(pg_url, settings_for(tmp_path, database_app_role=""))
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT current_user")) == "postgres"
    finally:
        engine.dispose()


# ---- the migration ---------------------------------------------------------------------------------------------

def migration_module() -> Any:
    path = REPO / "alembic" / "versions" / "0017_row_level_security.py"
    spec = importlib.util.spec_from_file_location("rls_migration", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_databases() -> Iterator[list[str]]:
    names = [f"sb_test_rls_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    yield [PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}" for name in names]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_databases_migrate_at_once_and_downgrade_and_upgrade_again(
    fresh_databases: list[str], app_role: None
) -> None:
    """Two processes, DATABASE_APP_ROLE set (migrations must still run as the owner), the role already there."""
    script = "import sys\nfrom app.db import migrate\nmigrate(sys.argv[1])\n"
    runs = [subprocess.Popen([sys.executable, "-c", script, url], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for url in fresh_databases]
    for run in runs:
        _out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    for url in fresh_databases:
        engine = create_engine(psycopg_url(url))
        with engine.connect() as conn:
            assert uncovered(conn) == []
        engine.dispose()

    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(REPO / "alembic"))
    cfg.set_main_option("sqlalchemy.url", fresh_databases[0])
    command.downgrade(cfg, "0016")
    engine = create_engine(psycopg_url(fresh_databases[0]))
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM pg_policies WHERE schemaname = current_schema()")) == 0
        assert conn.scalar(text("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE n.nspname = current_schema() AND c.relrowsecurity")) == 0
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        assert uncovered(conn) == []
    engine.dispose()


def test_creating_the_role_survives_a_concurrent_migration_creating_it_first(pg_url: str) -> None:
    """The cluster-wide race, made certain: a first transaction creates the role and stays open; a second (another
    database's migration) tries too and waits on it; the first commits; the second carries on without an error.
    With a throwaway role name, so the real role is never dropped under other test databases."""
    name = f"sb_rls_race_{uuid.uuid4().hex[:8]}"
    ensure = migration_module().ENSURE_ROLE.replace(ROLE, name)
    first = psycopg.connect(pg_url)
    second = psycopg.connect(pg_url)
    errors: list[BaseException] = []

    def migrate_second() -> None:
        try:
            second.execute(ensure)
            second.commit()
        except BaseException as exc:  # asserted below
            errors.append(exc)

    try:
        first.execute(ensure)
        thread = threading.Thread(target=migrate_second)
        thread.start()
        with psycopg.connect(pg_url, autocommit=True) as watcher:
            pid = second.info.backend_pid
            while thread.is_alive() and watcher.execute(
                "SELECT wait_event_type IS DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone() != (False,):
                threading.Event().wait(0.05)
        assert thread.is_alive()  # waiting for the first transaction, as two real migrations would
        first.commit()
        thread.join(timeout=60)
        assert errors == []
        with psycopg.connect(pg_url, autocommit=True) as check:
            assert check.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,)).fetchone() == (1,)
    finally:
        first.close()
        second.close()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{name}"')


def test_an_owner_that_is_no_superuser_migrates_is_held_by_force_and_a_member_login_needs_no_set_role(
    graph: Graph, app_role: None, without_app_scope: None
) -> None:
    """The production shape: the schema's owner is an ordinary login (with CREATEROLE for the first migration);
    FORCE holds it to the policies too, and the application logs in as its own member of the app role."""
    from app.db import migrate

    suffix = uuid.uuid4().hex[:8]
    owner, login, database = f"sb_owner_{suffix}", f"sb_login_{suffix}", f"sb_test_rls_owner_{suffix}"
    host = PG_ADMIN_URL.rsplit("/", 1)[0].split("@", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{owner}" LOGIN CREATEROLE')
        admin.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE {ROLE}')
        admin.execute(f'CREATE DATABASE "{database}" OWNER "{owner}"')
    try:
        owner_url = f"postgresql://{owner}@{host}/{database}"
        migrate(owner_url)  # DATABASE_APP_ROLE is set: the migration still runs as the owner
        tenant = uuid.uuid4().hex
        with as_owner_engine(owner_url) as engine:
            with engine.connect() as conn, conn.begin():
                assert conn.scalar(text("SELECT current_user")) == owner
                assert uncovered(conn) == []
                assert conn.scalar(text(f"SELECT pg_has_role('{ROLE}', 'MEMBER')")) is True  # granted by 0017
                in_scope(conn, cross="test")
                conn.execute(text("INSERT INTO tenants (id, slug, name, persona, policies, created_at) "
                                  "VALUES (:t, :t, 'x', '{}', '{}', now())"), {"t": tenant})
            with engine.connect() as conn:
                assert conn.scalar(text("SELECT count(*) FROM tenants")) == 0  # the owner too, without a scope
        # The login is the member: no SET ROLE.
        engine = make_engine(f"postgresql://{login}@{host}/{database}", graph.settings(database_app_role=""))
        with Session(engine, info={"tenant_id": tenant}) as session:
            assert session.scalar(text("SELECT current_user")) == login
            assert [t.id for t in session.scalars(select(Tenant))] == [tenant]
        with Session(engine) as session:
            assert session.scalars(select(Tenant)).all() == []
        engine.dispose()
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{login}"')
            admin.execute(f'DROP ROLE IF EXISTS "{owner}"')


@contextmanager
def as_owner_engine(url: str) -> Iterator[Engine]:
    engine = rls.as_owner(make_engine(url))
    yield engine
    engine.dispose()

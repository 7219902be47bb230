"""Tenant-scoped sessions, on SQLite and Postgres: a session of tenant A cannot read, get by primary key, update,
delete or insert tenant B's rows of any tenant-owned model (app/tenant_scope.py), and a session without a scope
refuses to run anything."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, Table, bindparam, delete, event, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, migrate, scope_info
from app.models import Base, Message, Tenant
from app.tenant_scope import TenantScopeError, tenant_columns

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPECIAL = {("memberships", "role"): "agent", ("invitations", "role"): "agent"}


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'scope.db'}"
        migrate(url)
    else:
        url = request.getfixturevalue("pg_url")
    engine: Engine = make_engine(url)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


def _value(table: Table, column: Any, tenant: str, ids: dict[str, dict[str, str]]) -> Any:
    if (table.name, column.name) in SPECIAL:
        return SPECIAL[table.name, column.name]
    if column is tenant_columns().get(table):
        return tenant
    for fk in column.foreign_keys:
        return ids[tenant][fk.column.table.name]
    if column.primary_key and isinstance(column.type, Integer):
        return None  # autoincrement
    kind = getattr(column.type, "impl", column.type).python_type
    if kind is datetime:
        return NOW
    if kind is date:
        return date(2026, 1, 1)
    if kind in (bool, int, float):
        return kind(1)
    if kind in (dict, list):
        return {}
    if kind is bytes:
        return b"\x00" * 4
    return uuid.uuid4().hex[: min(12, getattr(column.type, "length", None) or 12)]


def _seed(sessions: sessionmaker[Session]) -> tuple[str, str, dict[str, dict[str, str]]]:
    """Two new tenants A and B, with one row of every tenant-owned table (and of each table they refer to) each;
    returns A, B and the primary keys of each tenant's rows, by table."""
    A, B = f"a{uuid.uuid4().hex[:10]}", f"b{uuid.uuid4().hex[:10]}"
    ids: dict[str, dict[str, str]] = {A: {}, B: {}}
    tables = [t for t in Base.metadata.sorted_tables]
    with sessions(info=scope_info(cross_tenant="tests")) as session:
        for tenant in (A, B):
            for table in tables:
                if table.name == "tenants":
                    session.execute(insert(table), {"id": tenant, "slug": tenant, "name": tenant, "persona": {},
                                                    "policies": {}, "created_at": NOW})
                    ids[tenant]["tenants"] = tenant
                    continue
                row = {c.name: _value(table, c, tenant, ids) for c in table.c if not c.nullable or c.primary_key
                       or c.foreign_keys}
                row = {k: v for k, v in row.items() if v is not None}
                pk = session.execute(insert(table).returning(*table.primary_key.columns), row).first()
                assert pk is not None
                ids[tenant][table.name] = pk[0]
        session.commit()
    return A, B, ids


def _tenant_owned() -> list[Any]:
    return [m.class_ for m in Base.registry.mappers if m.local_table in tenant_columns()]


def test_a_tenant_session_sees_and_touches_only_its_own_rows(sessions: sessionmaker[Session]) -> None:
    A, B, ids = _seed(sessions)
    models = _tenant_owned()
    assert Tenant in models and len(models) >= 19
    for model in models:
        table = model.__table__
        [pk] = table.primary_key.columns
        key = getattr(model, pk.key)
        mine, theirs = ids[A][table.name], ids[B][table.name]
        with sessions(info=scope_info(tenant=A)) as session:
            assert session.scalars(select(key)).all() == [mine], model
            assert [getattr(r, pk.key) for r in session.scalars(select(model))] == [mine], model
            assert session.get(model, theirs) is None, model
            assert session.get(model, mine) is not None, model
            assert session.scalar(select(key).where(key == theirs)) is None, model
            column = tenant_columns()[table].key
            moved = session.execute(update(model).where(key == theirs).values({column: A})
                                    .execution_options(synchronize_session=False))
            assert moved.rowcount == 0, model  # type: ignore[attr-defined]
            gone = session.execute(delete(model).where(key == theirs).execution_options(synchronize_session=False))
            assert gone.rowcount == 0, model  # type: ignore[attr-defined]
            session.commit()
        with sessions(info=scope_info(cross_tenant="tests")) as session:
            assert session.scalar(select(key).where(key == theirs)) == theirs, model  # untouched
            assert session.scalar(select(tenant_columns()[table]).where(pk == theirs)) == B, model


def test_a_tenant_session_cannot_insert_or_move_a_row_into_another_tenant(sessions: sessionmaker[Session]) -> None:
    A, B, ids = _seed(sessions)
    for model in _tenant_owned():
        table = model.__table__
        column = tenant_columns()[table].key
        with sessions(info=scope_info(tenant=A)) as session:
            row = session.get_one(model, ids[A][table.name])
            setattr(row, column, B)
            with pytest.raises(TenantScopeError, match="cannot write"):
                session.flush()
            session.rollback()
        if model is Tenant:
            continue
        values = {c.key: _value(table, c, B, ids) for c in table.c if not c.primary_key or c.foreign_keys}
        with sessions(info=scope_info(tenant=A)) as session:
            session.add(model(**{k: v for k, v in values.items() if v is not None}))
            with pytest.raises(TenantScopeError, match="cannot write"):
                session.flush()
            session.rollback()
            with pytest.raises(TenantScopeError, match="cannot insert"):
                session.execute(insert(table), {k: v for k, v in values.items() if v is not None})


def test_core_statements_must_name_the_sessions_tenant(sessions: sessionmaker[Session]) -> None:
    A, B, ids = _seed(sessions)
    messages: Table = Base.metadata.tables["messages"]
    conversations: Table = Base.metadata.tables["conversations"]
    by_tenant = select(messages.c.id).where(messages.c.tenant_id == bindparam("tenant"))
    joined = (select(messages.c.id, conversations.c.mode)
              .join(conversations, (conversations.c.id == messages.c.conversation_id)
                    & (conversations.c.tenant_id == messages.c.tenant_id))
              .where(messages.c.tenant_id == bindparam("tenant")))
    with sessions(info=scope_info(tenant=A)) as session:
        assert session.scalars(by_tenant, {"tenant": A}).all() == [ids[A]["messages"]]
        assert len(session.execute(joined, {"tenant": A}).all()) == 1
        for refused, params in (
            (by_tenant, {"tenant": B}),
            (select(messages.c.id), {}),
            (select(messages.c.id).join(conversations, conversations.c.id == messages.c.conversation_id)
             .where(messages.c.tenant_id == bindparam("tenant")), {"tenant": A}),
            (update(messages).where(messages.c.id == bindparam("id")).values(text="x"), {"id": ids[B]["messages"]}),
        ):
            with pytest.raises(TenantScopeError, match="without comparing its tenant column"):
                session.execute(refused, params)


def test_a_session_without_a_scope_refuses_every_statement_and_flush(sessions: sessionmaker[Session]) -> None:
    A, _, ids = _seed(sessions)
    with sessions() as session:
        with pytest.raises(TenantScopeError, match=r"no tenant scope: open it with session_scope\(tenant="):
            session.execute(select(Tenant))
        with pytest.raises(TenantScopeError, match="no tenant scope"):
            session.get(Tenant, ids[A]["tenants"])
    with sessions() as session:
        session.add(Tenant(slug="new", name="new"))
        with pytest.raises(TenantScopeError, match="no tenant scope"):
            session.flush()


def test_a_sessions_scope_is_checked_when_it_is_opened() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        scope_info()
    with pytest.raises(ValueError, match="exactly one"):
        scope_info(tenant="a", cross_tenant="tests")
    with pytest.raises(ValueError, match="must say why"):
        scope_info(cross_tenant=" ")


def test_the_scope_cannot_change_after_the_first_statement(sessions: sessionmaker[Session]) -> None:
    A, B, _ = _seed(sessions)
    with sessions(info=scope_info(tenant=A)) as session:
        session.execute(select(Tenant.id))
        session.info["tenant_id"] = B
        with pytest.raises(TenantScopeError, match="never changes"):
            session.execute(select(Tenant.id))


def test_on_sqlite_the_tenant_criterion_filters_but_never_chooses_the_index(tmp_path: Path) -> None:
    """Without statistics SQLite would read a conversation's messages through the (tenant_id, created_at) index,
    all the tenant's messages; the criterion is `+messages.tenant_id` there, and the conversation's index stays."""
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    migrate(url)
    engine = make_engine(url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    with Session(engine, info=scope_info(tenant="a")) as session:
        session.scalars(select(Message).where(Message.conversation_id == "c").order_by(Message.created_at)).all()
        [sql] = statements
        assert "+messages.tenant_id = ?" in sql
        plan = " ".join(row[-1] for row in session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}",
                                                                               ("c", "a")))
    assert "ix_messages_conversation_created" in plan, plan
    engine.dispose()

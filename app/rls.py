"""Postgres row-level security, the database's own wall between tenants (docs/security.md#row-level-security).

Migration 0017 enables and forces RLS on every table, with policies that compare each row's tenant with two
transaction-local settings:

- `switchboard.tenant_id`: the tenant of the unit of work; only its rows are visible and writable;
- `switchboard.cross_tenant`: a reason (`routing`, `sweep`, `relay`, `migration`...); when non-empty, every row is.

Both come from the session: `session.info["tenant_id"]` or `session.info["cross_tenant"]`, fixed before its first
statement. `set_scope` (an `after_begin` listener on every Session) sends them in one statement at the start of
each transaction, with `is_local` true: they end with the transaction, so a pooled connection carries nothing to
the next one, and a session without a scope sees no row at all.

Superusers and roles with BYPASSRLS are not subject to any of this. `install(engine, role)` therefore switches every
new connection to `DATABASE_APP_ROLE` (a NOLOGIN role without either, created by the migration) when it is set.
SQLite has no RLS and keeps the application-level scope.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session, SessionTransaction

TENANT_GUC = "switchboard.tenant_id"
CROSS_TENANT_GUC = "switchboard.cross_tenant"

_SET_SCOPE = text(f"SELECT set_config('{TENANT_GUC}', :tenant, true), set_config('{CROSS_TENANT_GUC}', :cross, true)")


def scope_of(session: Session) -> tuple[str, str]:
    """(tenant id, cross-tenant reason) of a session; '' for what it does not have."""
    return str(session.info.get("tenant_id") or ""), str(session.info.get("cross_tenant") or "")


@event.listens_for(Session, "after_begin")
def set_scope(session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
    """Every transaction of every session on Postgres starts by stating its scope, whether or not the connection
    is subject to RLS: an owner login that is not a superuser is (FORCE), and a session without a scope then sees
    nothing instead of everything."""
    if connection.dialect.name != "postgresql":
        return
    tenant, cross = scope_of(session)
    connection.execute(_SET_SCOPE, {"tenant": tenant, "cross": cross})


class _SetRole:
    """`connect` listener: the connection's role for its whole life. Committed at once: psycopg opens a
    transaction for the statement, and SET ROLE inside a transaction that is later rolled back would be undone."""

    def __init__(self, role: str) -> None:
        self.role = role

    def __call__(self, dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f'SET ROLE "{self.role}"')  # the name is checked by Settings (a plain identifier)
        cursor.close()
        dbapi_connection.commit()


_role_hooks: WeakKeyDictionary[Engine, _SetRole] = WeakKeyDictionary()


def install(engine: Engine, role: str) -> Engine:
    """On Postgres with a `role` (the setting `DATABASE_APP_ROLE`), every new connection of `engine` runs as it."""
    if engine.dialect.name == "postgresql" and role:
        hook = _SetRole(role)
        event.listen(engine, "connect", hook)
        _role_hooks[engine] = hook
    return engine


def as_owner(engine: Engine) -> Engine:
    """Undo `install` on an engine that has not connected yet: migrations run as the login that owns the schema
    (the app role may not exist before the first one, and it may not create tables)."""
    hook = _role_hooks.pop(engine, None)
    if hook is not None:
        event.remove(engine, "connect", hook)
    return engine

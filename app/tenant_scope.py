"""Tenant-scoped sessions. Every session the application opens says, in `Session.info`, whose data it may touch:
`info["tenant_id"]` (a tenant session) or `info["cross_tenant"]` (the named escape hatch: why it crosses tenants
on purpose); `app/db.py` `session_scope` / `open_session` set exactly one before the first statement.

In a tenant session:
- every ORM select, update and delete (and so `session.get`, relationship loads, `select(Model.column)`) gets
  the tenant criterion on every tenant-owned model (`TenantOwned`; `Tenant` itself by its `id`) through
  `with_loader_criteria`, aliases and subqueries included;
- a Core statement on a tenant-owned table (the hot paths' prebuilt `Table` statements, which the ORM criteria do
  not reach) must, for each such table (or alias) it reads, compare its tenant column with a bound value that is
  the session's tenant, or join it on the tenant column to one that does (`same_tenant`); else it is refused. The
  check looks for the comparisons anywhere in the statement (it does not follow OR): it catches a forgotten
  tenant, it is no SQL prover;
- an insert (ORM or Core) must carry the session's tenant in every row, and a flush refuses a new, changed or
  deleted row of another tenant.
A session with neither key refuses every statement and every flush, naming the fix. Raw SQL (`text()`) carries
no model, so nothing here can scope it: the application uses it only for tenant-free statements (health checks).
There is no per-statement escape inside a tenant session on purpose: on Postgres, row-level security scopes the
whole transaction (app/rls.py), so such a statement would still see one tenant; a question about every tenant
is asked in a cross-tenant session of its own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Column, ColumnElement, String, Table, event
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, ColumnClause
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import Alias

from app.models import Base, Tenant
from app.models.base import TenantOwned

TENANT_KEY = "tenant_id"
CROSS_TENANT_KEY = "cross_tenant"
_FROZEN_KEY = "_scope_frozen"

FIX = ("open it with session_scope(tenant=<tenant id>) or, where crossing tenants is the point, "
       "session_scope(cross_tenant=<reason>) (app/db.py)")


class TenantScopeError(RuntimeError):
    """A statement or flush outside its session's tenant, or in a session without a scope: a programming error."""


def session_tenant(session: Session) -> str | None:
    """The session's tenant; None in a cross-tenant session. Raises in a session without a scope."""
    info = session.info
    tenant = info.get(TENANT_KEY)
    cross = info.get(CROSS_TENANT_KEY)
    if (tenant is None) == (cross is None):
        raise TenantScopeError(f"this session has {'both scopes' if tenant else 'no tenant scope'}: {FIX}")
    frozen = info.get(_FROZEN_KEY)
    if frozen is None:
        info[_FROZEN_KEY] = (tenant, cross)
    elif frozen != (tenant, cross):
        raise TenantScopeError("a session's scope is fixed before its first statement and never changes: "
                               "open another session for the other scope")
    return tenant


class filter_only(FunctionElement[str]):
    """A tenant column as a filter only, never as the way in: on SQLite `+messages.tenant_id` (the documented way to
    keep a term away from the index choice), elsewhere the plain column. SQLite chooses indexes without statistics;
    given `conversation_id = ? AND tenant_id = ? ORDER BY created_at` it would take the (tenant_id, created_at) index
    and scan all the tenant's messages. The query's own filters keep choosing the index, as before the scope;
    Postgres plans from statistics and sees the plain column."""

    name = "filter_only"
    type = String()
    inherit_cache = True


@compiles(filter_only)
def _plain(element: filter_only, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(filter_only, "sqlite")
def _unindexed(element: filter_only, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


def same_tenant(left: Any, right: Any) -> ColumnElement[bool]:
    """A join condition: two tenant-owned tables' rows belong to the same tenant (see `filter_only`)."""
    return filter_only(left.c.tenant_id) == filter_only(right.c.tenant_id)


@lru_cache(maxsize=1)
def tenant_columns() -> Mapping[Table, Column[Any]]:
    """The tenant column of every tenant-owned table: `tenant_id`, and `tenants.id` for the tenants themselves."""
    columns: dict[Table, Column[Any]] = {}
    for mapper in Base.registry.mappers:
        table = mapper.local_table
        if isinstance(table, Table) and issubclass(mapper.class_, TenantOwned):
            columns[table] = table.c.tenant_id
    tenants: Table = Tenant.__table__  # type: ignore[assignment]
    columns[tenants] = tenants.c.id
    return columns


@event.listens_for(Session, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> None:
    tenant = session_tenant(state.session)
    if tenant is None:
        return
    if state.is_insert:
        _check_inserted(state, tenant)
        return
    if not (state.is_select or state.is_update or state.is_delete) or state.is_column_load:
        return
    if state.statement._propagate_attrs.get("compile_state_plugin") == "orm":
        state.statement = state.statement.options(*_criteria(tenant))
    else:
        _check_core(state, tenant)


@lru_cache(maxsize=4096)
def _criteria(tenant: str) -> tuple[Any, ...]:
    """The tenant's loader criteria, built once per tenant: building them (the lambdas' analysis) cost more than
    running a primary-key lookup; applying built ones is cheap (SQLAlchemy caches the compiled statement)."""
    return (
        with_loader_criteria(TenantOwned, lambda cls: filter_only(cls.tenant_id) == tenant, include_aliases=True),
        with_loader_criteria(Tenant, lambda cls: cls.id == tenant, include_aliases=True),
    )


def _rows(parameters: Any) -> list[Mapping[str, Any]]:
    if parameters is None:
        return [{}]
    return list(parameters) if isinstance(parameters, list | tuple) else [parameters]


def _check_inserted(state: ORMExecuteState, tenant: str) -> None:
    table = getattr(state.statement, "table", None)
    if not isinstance(table, Table) or (column := tenant_columns().get(table)) is None:
        return
    for row in _rows(state.parameters):
        if row.get(column.key) != tenant:
            raise TenantScopeError(f"a session of tenant {tenant} cannot insert into {table.name} a row of tenant "
                                   f"{row.get(column.key)!r}")


@dataclass(frozen=True)
class _CoreScope:
    """What a Core statement says about the tenant of each tenant-owned table (or alias of one) it reads:
    `binds[i]`, the bound values node i's tenant column is compared with (`==`, `IN`); `links`, pairs of nodes whose
    tenant columns are compared with each other (a join on the tenant)."""

    names: tuple[str, ...]
    binds: tuple[tuple[BindParameter[Any], ...], ...]
    links: tuple[tuple[int, int], ...]


def _tenant_table(from_: Any) -> Table | None:
    while isinstance(from_, Alias):
        from_ = from_.element
    return from_ if isinstance(from_, Table) and from_ in tenant_columns() else None


def _tenant_node(element: Any) -> Any:
    """The table or alias whose tenant column `element` is, else None."""
    if isinstance(element, filter_only):
        [element] = element.clauses
    if not isinstance(element, ColumnClause):
        return None
    table = _tenant_table(element.table)
    return element.table if table is not None and element.key == tenant_columns()[table].key else None


@lru_cache(maxsize=512)
def _core_scope(statement: Any) -> _CoreScope:
    nodes: dict[Any, int] = {}
    bare: list[Table] = []
    compared: list[tuple[Any, Any]] = []
    for element in visitors.iterate(statement):
        if isinstance(element, ColumnClause) and _tenant_table(element.table) is not None:
            nodes.setdefault(element.table, len(nodes))
        elif isinstance(element, Table) and element in tenant_columns():
            bare.append(element)
        elif isinstance(element, BinaryExpression) and element.operator in (operators.eq, operators.in_op):
            compared.append((element.left, element.right))
    for table in bare:  # a table read only through an alias is the alias's node; one read for nothing is its own
        if not any(_tenant_table(node) is table for node in nodes):
            nodes.setdefault(table, len(nodes))
    binds: list[list[BindParameter[Any]]] = [[] for _ in nodes]
    links = []
    for left, right in compared:
        a, b = _tenant_node(left), _tenant_node(right)
        if a is not None and b is not None:
            links.append((nodes[a], nodes[b]))
        elif a is not None and isinstance(right, BindParameter):
            binds[nodes[a]].append(right)
        elif b is not None and isinstance(left, BindParameter):
            binds[nodes[b]].append(left)
    names = tuple(str(getattr(node, "name", node)) for node in nodes)
    return _CoreScope(names, tuple(map(tuple, binds)), tuple(links))


def _check_core(state: ORMExecuteState, tenant: str) -> None:
    scope = _core_scope(state.statement)
    if not scope.names:
        return
    for row in _rows(state.parameters):
        held = {i for i, binds in enumerate(scope.binds) if any(_only(tenant, row.get(b.key, b.value)) for b in binds)}
        while True:
            more = {b for a, b in scope.links if a in held} | {a for a, b in scope.links if b in held}
            if more <= held:
                break
            held |= more
        if len(held) < len(scope.names):
            loose = [name for i, name in enumerate(scope.names) if i not in held]
            raise TenantScopeError(
                f"a Core statement in a session of tenant {tenant} reads {', '.join(loose)} without comparing its "
                "tenant column with the session's tenant (a bound value, or a join on another table's tenant "
                "column that is); or select through the mapped class, which is scoped")


def _only(tenant: str, value: Any) -> bool:
    if isinstance(value, str):
        return value == tenant
    return isinstance(value, Iterable) and all(v == tenant for v in value)


@event.listens_for(Session, "before_flush")
def _scope_flush(session: Session, _context: Any, _instances: Any) -> None:
    if not (session.new or session.dirty or session.deleted):
        return
    tenant = session_tenant(session)
    if tenant is None:
        return
    for obj in (*session.new, *session.dirty, *session.deleted):
        owner = obj.id if isinstance(obj, Tenant) else getattr(obj, "tenant_id", tenant)
        if isinstance(obj, TenantOwned | Tenant) and owner != tenant:
            raise TenantScopeError(f"a session of tenant {tenant} cannot write a {type(obj).__name__} of tenant "
                                   f"{owner!r}")

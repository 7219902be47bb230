"""Every session the application opens has a scope (app/tenant_scope.py): a tenant, or a cross-tenant reason from
the short list below. Adding an escape hatch, or a new way of opening a session or a raw connection, fails here
until this list says so: a reviewed change."""

from __future__ import annotations

import ast
from pathlib import Path

from app.models import Base, Tenant
from app.models.base import TenantOwned

REPO = Path(__file__).resolve().parents[2]
WALKED = ("app", "gateways", "workers")

# (file, reason): the places that cross tenants on purpose.
CROSS_TENANT = {
    ("app/auth.py", "API-key lookup by hash"),
    ("app/accounts/routes.py", "a person's logins across tenants"),
    ("app/accounts/routes.py", "invitation acceptance by token"),
    ("app/admin/user_routes.py", "account cleanup after a removal"),
    ("gateways/common.py", "webhook account routing"),
    ("app/tenants/service.py", "tenant lookup by slug"),
    ("app/operations.py", "tenant creation"),
    ("app/outbox.py", "outbox relay"),
    ("app/conversations/service.py", "intake batch of several tenants"),
    ("app/conversations/redrive.py", "redrive sweep"),
    ("app/retention.py", "retention sweep over all tenants"),
    ("app/key_rotation.py", "key rotation over every stored secret"),
    ("workers/ingest.py", "job resume"),
}
# Raw connections, outside any session: tenant-free statements only.
RAW_CONNECTIONS = {
    "app/main.py",  # readiness: SELECT 1
    "gateways/server.py",  # readiness: SELECT 1
    "app/db.py",  # flush_deleted: the SQLite WAL checkpoint
}
SESSION_FACTORIES = {"session_scope", "open_session"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def problems_in(path: str, source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        where = f"{path}:{node.lineno}"
        name = _name(node.func)
        if name == "execution_options" and any(k.arg == "cross_tenant" for k in node.keywords):
            found.append(f"{where}: no per-statement escape in a tenant session (row-level security scopes the "
                         "whole transaction): open a cross-tenant session with its reason")
        if name in SESSION_FACTORIES and path != "app/db.py":  # where they are defined
            keywords = {k.arg: k.value for k in node.keywords}
            scopes = [k for k in ("tenant", "cross_tenant") if k in keywords]
            if None in keywords or len(scopes) != 1:
                found.append(f"{where}: {name}() needs exactly one of tenant= or cross_tenant=, spelled out")
                continue
            reason = keywords.get("cross_tenant")
            if reason is not None:
                if not (isinstance(reason, ast.Constant) and isinstance(reason.value, str)):
                    found.append(f"{where}: cross_tenant= must be a literal reason")
                elif (path, reason.value) not in CROSS_TENANT:
                    found.append(f"{where}: cross_tenant={reason.value!r} is not an allowed escape hatch here")
        elif path != "app/db.py" and name not in SESSION_FACTORIES and (
            name in ("Session", "sessionmaker", "scoped_session")
            or (name.endswith("sessions") and not node.args)  # a sessionmaker kept as `self.sessions`
            or (isinstance(node.func, ast.Call) and _name(node.func.func) == "get_sessionmaker")
        ):
            found.append(f"{where}: a session opened without a scope: use app.db.session_scope / open_session")
        elif name in ("connect", "begin", "raw_connection") and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            engine = (isinstance(owner, ast.Call) and _name(owner.func) == "get_engine") or "engine" in _name(owner)
            if engine and path not in RAW_CONNECTIONS:
                found.append(f"{where}: a raw connection bypasses the tenant scope: use a scoped session")
    return found


def test_every_session_in_the_code_is_opened_with_a_scope() -> None:
    problems: list[str] = []
    for top in WALKED:
        for file in sorted((REPO / top).rglob("*.py")):
            path = file.relative_to(REPO).as_posix()
            problems += problems_in(path, file.read_text(encoding="utf-8"))
    assert problems == []


def test_the_walker_finds_each_kind_of_unscoped_access() -> None:
    source = "\n".join([
        "with session_scope() as s: pass",
        "with session_scope(sessions=x) as s: pass",
        "with session_scope(tenant=t, cross_tenant='tests') as s: pass",
        "with session_scope(**scope) as s: pass",
        "with session_scope(cross_tenant='because') as s: pass",
        "with session_scope(cross_tenant=why) as s: pass",
        "s = get_sessionmaker()()",
        "s = self._sessions()",
        "s = Session(engine)",
        "c = get_engine().connect()",
        "c = engine.begin()",
        "with session_scope(tenant=t) as s: pass",
        "with open_session(cross_tenant='webhook account routing') as s: pass",
        "s.execute(select(x).execution_options(cross_tenant='because'))",
    ])
    found = sorted(problems_in("gateways/common.py", source), key=lambda p: int(p.split(":")[1]))
    assert [int(p.split(":")[1]) for p in found] == [*range(1, 12), 14]
    assert "not an allowed escape hatch" in found[4]


def test_every_model_with_a_tenant_column_is_tenant_owned() -> None:
    for mapper in Base.registry.mappers:
        if "tenant_id" in mapper.local_table.c:
            assert issubclass(mapper.class_, TenantOwned), mapper.class_.__name__
    assert not issubclass(Tenant, TenantOwned)  # scoped by its id instead

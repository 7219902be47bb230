"""Accounts fixtures: the admin API's app and tenants (SQLite, or Postgres with `backend="postgres"`), people
added through the accounts service, and a login helper. Argon2 runs at a low cost here so the tests stay quick;
the cost is a setting, and a test raises it to see the rehash on login."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.admin import conftest as admin_fixtures
from tests.admin.conftest import TenantKeys
from tests.conftest import Graph

backend, client, tenant_a, tenant_b = (admin_fixtures.backend, admin_fixtures.client, admin_fixtures.tenant_a,
                                       admin_fixtures.tenant_b)

PASSWORD = "correct horse battery staple"


def email(name: str) -> str:
    """A fresh address: accounts are global, and the Postgres database lives for the whole test session."""
    return f"{name}.{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture(autouse=True)
def cheap_hashes(request: pytest.FixtureRequest) -> None:
    """On the test's own graph; a graph a module shares (tests/analytics/scenario.py) keeps its settings."""
    if "graph" in request.fixturenames:
        graph: Graph = request.getfixturevalue("graph")
        graph.configure(password_hash_memory_kib=1024, password_hash_time_cost=1)


@dataclass
class Person:
    user_id: str
    email: str
    role: str
    password: str = PASSWORD


def add_person(tenant: TenantKeys, email: str, role: str, password: str | None = PASSWORD) -> Person:
    """As the machine's operator (an owner) would, through the same service as the API and the CLI."""
    from app.accounts import service
    from app.db import session_scope

    with session_scope(cross_tenant="tests") as session:
        member, _ = service.add_member(session, service.tenant_operator(session, tenant.slug), email, role, password)
    return Person(member.user_id, member.email, role)


def login(client: TestClient, person: Person | str, password: str | None = None, tenant: str | None = None,
          expect: int = 200) -> dict[str, Any]:
    email = person if isinstance(person, str) else person.email
    form = {"username": email, "password": password or (PASSWORD if isinstance(person, str) else person.password)}
    if tenant:
        form["tenant"] = tenant
    response = client.post("/auth/login", data=form)
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def audit(client: TestClient, tenant: TenantKeys, **params: str) -> list[dict[str, Any]]:
    response = client.get("/admin/v1/audit", headers=tenant.headers(), params=params)
    assert response.status_code == 200, response.text
    return response.json()["events"]  # type: ignore[no-any-return]

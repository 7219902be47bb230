from __future__ import annotations

import pytest

from app.db import migrate, session_scope
from tests.conftest import Graph


@pytest.fixture(params=["sqlite", "postgres"])
def tenant(request: pytest.FixtureRequest, graph: Graph) -> str:
    """A fresh tenant, once in embedded SQLite and once in the real Postgres."""
    from app.tenants.service import create_tenant

    if request.param == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    migrate()
    with session_scope(cross_tenant="tests") as session:
        return create_tenant(session, f"t-{request.param}-{id(request)}").tenant.id

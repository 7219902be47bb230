from __future__ import annotations

from pathlib import Path

import pytest

from app.db import migrate, session_scope


@pytest.fixture(params=["sqlite", "postgres"])
def tenant(request: pytest.FixtureRequest, sb_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh tenant, once in embedded SQLite and once in the real Postgres."""
    from app.bootstrap import reset_caches
    from app.tenants.service import create_tenant

    if request.param == "postgres":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("pg_url"))
        reset_caches()
    migrate()
    with session_scope(cross_tenant="tests") as session:
        return create_tenant(session, f"t-{request.param}-{id(request)}").tenant.id

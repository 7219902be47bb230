"""Embedded-mode fixtures of the knowledge tests: a migrated SQLite database with two tenants, and a small pack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.models import Tenant
from tests.knowledge.test_ingest import FAQ, RETURNS, SHIPPING, WARRANTY


@pytest.fixture
def db(sb_home: Path) -> Iterator[Session]:
    from app.db import get_sessionmaker, migrate

    migrate()
    with get_sessionmaker()(info={"cross_tenant": "tests"}) as session:
        session.add_all([Tenant(id=t, slug=t, name=t.title()) for t in ("acme", "globex")])
        session.commit()
        yield session


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    root = tmp_path / "pack"
    root.mkdir()
    for name, text in (("shipping.md", SHIPPING), ("returns.md", RETURNS), ("warranty.txt", WARRANTY),
                       ("faq.csv", FAQ)):
        (root / name).write_text(text)
    return root

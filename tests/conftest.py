"""Shared fixtures. Postgres and Redis are real servers (127.0.0.1); each test run gets its own database and
its own Redis key namespace, so parallel runs and other projects on the machine are never touched."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.bootstrap import Container
from tests.fakes.otlp_collector import otlp_collector  # noqa: F401  (fixture re-export)
from tests.traces import traced  # noqa: F401  (fixture re-export)

PG_ADMIN_URL = os.environ.get("SWITCHBOARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("SWITCHBOARD_TEST_REDIS", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated Postgres database for this test session, dropped afterwards."""
    import psycopg

    name = f"sb_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from app.db import migrate

    migrate(url)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A unique key prefix; every key under it is deleted after the test."""
    import redis

    ns = f"sbtest{uuid.uuid4().hex[:8]}"
    yield ns
    client = redis.Redis.from_url(REDIS_TEST_URL)
    keys = list(client.scan_iter(f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def sb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty SWITCHBOARD_HOME with every scale-out variable cleared: embedded mode."""
    home = tmp_path / "sbhome"
    monkeypatch.setenv("SWITCHBOARD_HOME", str(home))
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "S3_BUCKET", "LLM_BASE_URL", "LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(f"SWITCHBOARD_{var}", raising=False)
    from app.bootstrap import reset_caches

    reset_caches()
    yield home
    reset_caches()


@pytest.fixture
def services(sb_home: Path) -> Iterator[Container]:
    """This test's object graph (app/bootstrap.py) on an empty embedded home: the in-process bus, every other
    service built on first use. Installed as the process's container, so `create_app()` and the entry points use
    it too; closed afterwards. A test that needs a fake builds its own the same way:
    `installed(Container(get_settings(), bus=MemoryBus(), llm_client=fake))`."""
    from app.bus.memory import MemoryBus
    from app.config import get_settings

    with installed(Container(get_settings(), bus=MemoryBus())) as built:
        yield built


@contextmanager
def installed(built: Container) -> Iterator[Container]:
    """`built` as the process's container for the block, then the previous one back and `built` closed."""
    from app.bootstrap import install

    old = install(built)
    try:
        yield built
    finally:
        install(old)
        built.close()

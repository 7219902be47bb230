"""Shared fixtures. Postgres and Redis are real servers (127.0.0.1); each test run gets its own database and
its own Redis key namespace, so parallel runs and other projects on the machine are never touched."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from app.bootstrap import Container
from app.config import Settings
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


class _Given(Settings):
    """Settings from the values given, and from nothing else: never the developer's environment or `.env`."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_for(home: Path, **values: Any) -> Settings:
    """A test's settings: embedded mode on `home` unless `values` (field names: `database_url=`, `redis_url=`,
    ...) say otherwise; no environment variable is read."""
    return _Given(home=home, **values)


class Graph:
    """A test's object graph on its own home: a container built from `settings_for(home, **values)`, installed as
    the process's (so `get_settings()`, `db.session_scope()`, `create_app()` and in-process CLI commands use it)
    until `close`. `configure(**values)` replaces it with one built from the values so far updated with these:
    what a restarted process with those settings would build."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.values: dict[str, Any] = {}
        self.container: Container | None = None
        self._before: Container | None = None

    def settings(self, **values: Any) -> Settings:
        return settings_for(self.home, **{**self.values, **values})

    def configure(self, **values: Any) -> Container:
        from app.bootstrap import install

        built = Container(self.settings(**values))
        self.values.update(values)
        old = install(built)
        if self.container is None:
            self._before = old
        else:
            self.container.close()
        self.container = built
        return built

    def close(self) -> None:
        from app.bootstrap import install

        if self.container is not None:
            install(self._before)
            self.container.close()
            self.container = None


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[Graph]:
    """This test's object graph (app/bootstrap.py) on an empty embedded home: the in-process bus, every other
    service built on first use; installed as the process's container and closed afterwards. `graph.configure(
    database_url=pg_url)` rebuilds it with other settings. A test that needs a fake builds its own container
    from `graph.settings()`: `installed(Container(graph.settings(), llm_client=fake))`."""
    built = Graph(tmp_path / "sbhome")
    built.configure()
    yield built
    built.close()


@pytest.fixture
def sb_home(graph: Graph) -> Path:
    """The home of this test's graph (embedded mode, nothing read from the environment)."""
    return graph.home


@pytest.fixture
def services(graph: Graph) -> Container:
    """This test's installed container (see `graph`)."""
    assert graph.container is not None
    return graph.container


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

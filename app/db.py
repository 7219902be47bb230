"""Engine and sessions. Services flush; the edge (a request, a bus handler, a job) commits once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from app import config, rls, sqlite_writes, tenant_scope
from app.config import Settings, get_settings
from app.files import private_file

SQLITE_BUSY_MS = 30_000  # how long a SQLite writer waits for the write lock


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """`settings` (default: the process's) size the pool and name the Postgres app role (app/rls.py).
    `hide_parameters`: a statement's values (message text, contact ids) never appear in its errors or logs."""
    settings = settings or get_settings()
    # Every orchestrator worker may hold a connection at once (app/bus/concurrent.py); the gateway, the dispatcher
    # and the API need a few more. Connections beyond `pool_size` are opened on demand and closed when returned.
    pool: dict[str, Any] = {"pool_size": 10, "max_overflow": max(10, settings.orchestrator_concurrency)}
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm files the same mode.
            private_file(Path(database))
        # pysqlite starts a transaction at the first write, not at a read, so a unit of work that reads and then
        # writes waits for the write lock (busy_timeout) instead of failing on a stale WAL snapshot: concurrent
        # writers queue (tests/test_db.py).
        # A SQLite connection is a file handle: keep every one the orchestrator's and the dispatcher's workers may
        # hold at once instead of closing the overflow on return, so a busy process does not open (and set up) a
        # connection for nearly every message.
        pool["pool_size"] += 2 * pool["max_overflow"]
        connect: dict[str, Any] = {"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000}
        if database and database != ":memory:":
            # Writers take turns on locks (this process's threads, then every process's through a lock file beside
            # the database), not in SQLite's sleeping busy handler (app/sqlite_writes.py).
            connect["factory"] = sqlite_writes.connection_class(database, SQLITE_BUSY_MS / 1000)
        engine = create_engine(url, connect_args=connect, hide_parameters=True, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets `switchboard chat` read and write while `serve` runs in another process.
            cur.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a commit survives a crash of the
            # process (the gateway's "stored before 200" holds), only an OS crash or power cut can lose the last
            # few; the database is never corrupted. SQLite's recommended setting for WAL.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            # Deleted rows are overwritten with zeros, not left in free pages: an erased contact's messages
            # (app/contacts/privacy.py) must not survive in the file.
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, pool_pre_ping=True, hide_parameters=True, **pool)
    return rls.install(engine, settings.database_app_role)


class Database:
    """One database of one set of settings: its engine and sessionmaker, built on first use, closed by its owner
    (the container, app/bootstrap.py)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.settings.effective_database_url, self.settings)
            return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        engine = self.engine
        with self._lock:
            if self._sessions is None:
                self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
            return self._sessions

    def close(self) -> None:
        """Close the pool's connections (a later use opens new ones)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()


@lru_cache
def from_environment() -> Database:
    """The database of the environment's settings (a process that installed no container)."""
    return Database(config.from_environment())


_installed: Database | None = None


def current() -> Database:
    """The process's database: its installed container's (app/bootstrap.py), else the environment's."""
    return _installed or from_environment()


def install(database: Database | None) -> None:
    """Make `database` the process's (`bootstrap.install` does, with its container); None: the environment's."""
    global _installed
    _installed = database


def get_engine() -> Engine:
    return current().engine


def get_sessionmaker() -> sessionmaker[Session]:
    return current().sessions


def scope_info(*, tenant: str | None = None, cross_tenant: str | None = None) -> dict[str, str]:
    """A session's scope (`Session.info`): exactly one of a tenant id or the reason it crosses tenants on purpose."""
    if (tenant is None) == (cross_tenant is None):
        raise ValueError("a session needs exactly one of tenant=<tenant id> or cross_tenant=<reason>")
    if tenant is not None:
        if not tenant:
            raise ValueError("tenant= must be a tenant id, not empty")
        return {tenant_scope.TENANT_KEY: tenant}
    if not cross_tenant or not cross_tenant.strip():
        raise ValueError("cross_tenant= must say why the session crosses tenants")
    return {tenant_scope.CROSS_TENANT_KEY: cross_tenant}


def open_session(*, tenant: str | None = None, cross_tenant: str | None = None,
                 sessions: sessionmaker[Session] | None = None) -> Session:
    """A session scoped to one tenant (every query of a tenant-owned model is filtered to it, app/tenant_scope.py)
    or, through the named escape hatch, to none (`cross_tenant`: why). The caller closes it."""
    return (sessions or get_sessionmaker())(info=scope_info(tenant=tenant, cross_tenant=cross_tenant))


@contextmanager
def session_scope(*, tenant: str | None = None, cross_tenant: str | None = None,
                  sessions: sessionmaker[Session] | None = None) -> Iterator[Session]:
    """One unit of work in one scope (see `open_session`): commits on success, rolls back on any exception.
    `sessions`: the sessionmaker a long-lived worker was built with (a thread must not follow the process's engine
    when it is replaced)."""
    session = open_session(tenant=tenant, cross_tenant=cross_tenant, sessions=sessions)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(url: str | None = None) -> None:
    """Bring the schema to the latest Alembic revision (SQLite or Postgres, one history)."""
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    cfg = Config()
    cfg.set_main_option("script_location", str(root / "alembic"))
    cfg.set_main_option("sqlalchemy.url", url or get_settings().effective_database_url)
    command.upgrade(cfg, "head")


def flush_deleted() -> None:
    """After deleting personal data: on SQLite, checkpoint the write-ahead log and truncate it, so the pages that
    held the rows before the delete are gone from the WAL file too (best effort: a reader holding an old
    snapshot defers it to the next checkpoint). Postgres reclaims dead rows with autovacuum."""
    engine = get_engine()
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

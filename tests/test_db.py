"""The engine under the orchestrator's concurrency: SQLite writers queue instead of failing, and the pool lets every
worker hold a connection at once."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db import make_engine
from tests.conftest import settings_for


def test_concurrent_read_then_write_units_of_work_on_sqlite_all_commit(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'concurrent.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        conn.execute(text("CREATE TABLE log (id INTEGER PRIMARY KEY, worker INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (1, 0)"))
    workers = 24
    # Everyone reads before anyone writes: with a transaction opened at the read (a WAL snapshot), every writer
    # but the first would fail at once with "database is locked", busy_timeout or not.
    all_read = threading.Barrier(workers, timeout=5)
    errors: list[BaseException] = []

    def unit_of_work(worker: int) -> None:
        try:
            with Session(engine, info={"cross_tenant": "tests"}) as session:
                session.execute(text("SELECT n FROM counter WHERE id = 1")).scalar_one()
                with contextlib.suppress(threading.BrokenBarrierError):  # a writer holds the lock meanwhile
                    all_read.wait()
                session.execute(text("INSERT INTO log (worker) VALUES (:w)"), {"w": worker})
                session.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
                session.commit()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=unit_of_work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == workers
        assert conn.execute(text("SELECT count(DISTINCT worker) FROM log")).scalar_one() == workers
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_pool_lets_every_orchestrator_worker_hold_a_connection(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'pool.db'}"
    engine = make_engine(url, settings_for(tmp_path, orchestrator_concurrency=40))
    held = [engine.connect() for _ in range(40)]
    for conn in held:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    for conn in held:
        conn.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()


def test_sqlite_commits_skip_the_fsync_yet_survive_the_process_dying(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL: no fsync per commit (the orchestrator commits several times per message), and a
    commit is still in the database when the process that made it dies at once, without closing anything."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'durable.db'}"
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 1  # NORMAL
    script = (
        "import os, sys\n"
        "from sqlalchemy import text\n"
        "from app.db import make_engine\n"
        "engine = make_engine(sys.argv[1])\n"
        "with engine.begin() as conn:\n"
        "    conn.execute(text('CREATE TABLE kept (n INTEGER)'))\n"
        "    conn.execute(text('INSERT INTO kept VALUES (42)'))\n"
        "os._exit(9)  # no close, no checkpoint: only the WAL holds the row\n"
    )
    died = subprocess.run([sys.executable, "-c", script, url], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=60)
    assert died.returncode == 9, died.stderr
    assert (tmp_path / "durable.db-wal").stat().st_size > 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM kept")).scalar_one() == 42
    engine.dispose()


def test_sqlite_connections_are_kept_for_reuse_not_reopened_per_unit_of_work(
    tmp_path: Path
) -> None:
    """The orchestrator's and the dispatcher's workers holding a connection each, twice over: the second round
    reuses the first round's."""
    from sqlalchemy import event

    engine = make_engine(f"sqlite:///{tmp_path / 'reuse.db'}", settings_for(tmp_path, orchestrator_concurrency=40))
    opened: list[object] = []
    event.listen(engine, "connect", lambda conn, _record: opened.append(conn))
    for _ in range(2):
        held = [engine.connect() for _ in range(2 * 40)]
        for conn in held:
            assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 1
            conn.close()
    assert len(opened) == 2 * 40
    engine.dispose()

"""SQLite writers take turns (app/sqlite_writes.py) instead of sleeping in SQLite's busy handler: threads of a
process on a lock, processes on a lock file. A waiting writer starts when the holder commits or rolls back, reads
never wait, nothing is held after a transaction ends however it ends, and a process killed while it holds the turn
holds nothing. Other processes are real ones writing the same file."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app import sqlite_writes
from app.db import make_engine

WAIT = 10.0  # seconds a step may take before the test fails (never reached when it passes)
START = 120.0  # the same for a new Python process to start and import the app, on a busy machine


def _gate(path: Path) -> threading.Lock:
    """This process's thread lock of the turn on `path`."""
    return sqlite_writes.connection_class(str(path), WAIT).turn.threads  # type: ignore[attr-defined]


def _turn_taken(path: Path) -> bool:
    """Whether a process holds the writers' turn on `path` (this one included: tried from a lock file of our own)."""
    fd = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def test_a_second_writer_waits_on_the_gate_not_in_sqlite_and_starts_when_the_first_commits(tmp_path: Path) -> None:
    db = tmp_path / "gate.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE log (id INTEGER PRIMARY KEY, who TEXT NOT NULL)"))
    order: list[str] = []
    second_started, second_done = threading.Event(), threading.Event()

    def second_writer() -> None:
        second_started.set()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO log (who) VALUES ('second')"))
            order.append("second wrote")
        second_done.set()

    with engine.connect() as first:
        first.execute(text("INSERT INTO log (who) VALUES ('first')"))
        assert _gate(db).locked() and _turn_taken(db)  # taken at the transaction's first write
        other = threading.Thread(target=second_writer)
        other.start()
        second_started.wait(WAIT)
        assert not second_done.wait(0.2)  # queued behind the open transaction
        # A read is never held up by the writers' turn.
        with engine.connect() as reader:
            assert reader.execute(text("SELECT count(*) FROM log")).scalar_one() == 0
        order.append("first commits")
        first.commit()
    other.join(WAIT)
    assert order == ["first commits", "second wrote"]
    assert not _gate(db).locked() and not _turn_taken(db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT who FROM log ORDER BY id")).scalars().all() == ["first", "second"]
    engine.dispose()


def test_every_way_a_transaction_ends_gives_the_turn_back(tmp_path: Path) -> None:
    db = tmp_path / "ends.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    gate = _gate(db)

    with engine.connect() as conn:  # rollback
        conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
        assert gate.locked() and _turn_taken(db)
        conn.rollback()
    assert not gate.locked() and not _turn_taken(db)

    with engine.begin() as conn:  # a failing statement, then the rollback of the block
        conn.execute(text("INSERT INTO t (v) VALUES ('b')"))
    with pytest.raises(IntegrityError, match="UNIQUE"), engine.begin() as conn:
        conn.execute(text("INSERT INTO t (v) VALUES ('b')"))
    assert not gate.locked() and not _turn_taken(db)

    with engine.connect() as conn:  # a connection returned to the pool mid-transaction is rolled back
        conn.execute(text("INSERT INTO t (v) VALUES ('c')"))
    assert not gate.locked() and not _turn_taken(db)

    raw = sqlite3.connect(db, factory=sqlite_writes.connection_class(str(db), WAIT))  # closed mid-transaction
    raw.execute("INSERT INTO t (v) VALUES ('d')")
    assert gate.locked() and _turn_taken(db)
    raw.close()
    assert not gate.locked() and not _turn_taken(db)

    auto = sqlite3.connect(db, factory=sqlite_writes.connection_class(str(db), WAIT), isolation_level=None)
    auto.execute("INSERT INTO t (v) VALUES ('e')")  # autocommit: no transaction stays open, nothing is held
    assert not gate.locked() and not _turn_taken(db)
    auto.close()

    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t ORDER BY v")).scalars().all() == ["b", "e"]
    engine.dispose()


def test_a_writer_that_waits_past_the_timeout_goes_on_and_sqlite_decides(tmp_path: Path) -> None:
    """Another connection of this process holding the turn for ever (a bug) must not hang a writer for ever: after
    the wait it goes on without the turn and meets SQLite's own lock, as before the gate."""
    db = tmp_path / "timeout.db"
    quick = sqlite_writes.connection_class(str(db), 0.05)
    holder = sqlite3.connect(db, factory=quick, timeout=0.05)
    holder.execute("CREATE TABLE t (v TEXT)")
    holder.commit()
    holder.execute("INSERT INTO t VALUES ('held')")
    other = sqlite3.connect(db, factory=quick, timeout=0.05)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):  # SQLite's own lock still refuses it
            other.execute("INSERT INTO t VALUES ('late')")
    finally:
        other.rollback()
        holder.rollback()
        other.close()
        holder.close()
    assert not _gate(db).locked() and not _turn_taken(db)


def test_a_connection_that_lowers_its_busy_timeout_waits_no_longer_than_that_for_its_turn(tmp_path: Path) -> None:
    """A best-effort write (app/auth.py records a key's last use with a 200 ms busy timeout) gives up as soon as it
    would have on SQLite's own lock, not after the process's whole busy timeout in the queue for the turn."""
    db = tmp_path / "short.db"
    patient = sqlite_writes.connection_class(str(db), 600.0)  # never reached when the test passes
    holder = sqlite3.connect(db, factory=patient, timeout=600.0)
    holder.execute("CREATE TABLE t (v TEXT)")
    holder.commit()
    holder.execute("INSERT INTO t VALUES ('held')")
    hurried = sqlite3.connect(db, factory=patient, timeout=600.0, check_same_thread=False)
    hurried.execute("PRAGMA busy_timeout=50")
    outcome: list[str] = []

    def write() -> None:
        try:
            hurried.execute("INSERT INTO t VALUES ('late')")
            outcome.append("written")
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(WAIT)
    try:
        assert outcome == ["database is locked"]
    finally:
        holder.rollback()
        writer.join(WAIT)
        hurried.rollback()
        hurried.close()
        holder.close()
    assert not _gate(db).locked() and not _turn_taken(db)


def test_a_writer_whose_turn_another_process_holds_past_its_wait_goes_on_and_sqlite_decides(tmp_path: Path) -> None:
    """Another process keeps the lock file (here: an open file of our own, which flock treats as another process)
    while SQLite's lock is free: after its wait the writer goes on without the file's turn and SQLite lets it
    write. It keeps the thread lock until its transaction ends, as any holder does, and gives back only that."""
    db = tmp_path / "other.db"
    quick = sqlite_writes.connection_class(str(db), 0.05)
    conn = sqlite3.connect(db, factory=quick, timeout=WAIT)
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.commit()
    other = os.open(f"{db}-writer.lock", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        conn.execute("INSERT INTO t VALUES ('without the turn')")
        assert _gate(db).locked()
        conn.commit()
        assert not _gate(db).locked()
        assert _turn_taken(db)  # still the other holder's
    finally:
        os.close(other)
    assert not _turn_taken(db)
    assert conn.execute("SELECT v FROM t").fetchall() == [("without the turn",)]
    conn.close()


# Children of the tests below: module-level functions, so a spawned process can import them.

def _write_rows(url: str, who: str, threads: int, rows: int, go: Any) -> None:
    """`threads` threads, `rows` units of work each: read how many rows the thread has written, then write one."""
    engine = make_engine(url)
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        me = f"{who}-{thread}"
        try:
            for _ in range(rows):
                with engine.begin() as conn:
                    done = conn.execute(text("SELECT count(*) FROM log WHERE who = :me"), {"me": me}).scalar_one()
                    conn.execute(text("INSERT INTO log (who, n) VALUES (:me, :n)"), {"me": me, "n": done})
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(thread,)) for thread in range(threads)]
    go.wait(START)
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    engine.dispose()
    if errors:
        sys.exit(f"{who}: {errors!r}")


def _write_when_the_turn_comes(url: str, waiting: Any) -> None:
    """Write one row; `waiting` is set when this process finds the turn taken by another and waits for it."""
    real_sleep = sqlite_writes.sleep

    def sleep(seconds: float) -> None:
        waiting.set()
        real_sleep(seconds)

    sqlite_writes.sleep = sleep  # type: ignore[assignment]
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO log (who) VALUES ('second')"))
    engine.dispose()


def _hold_the_turn(url: str, holding: Any) -> None:
    """Open a write transaction and never end it."""
    engine = make_engine(url)
    conn = engine.connect()
    conn.execute(text("INSERT INTO log (who) VALUES ('killed before its commit')"))
    holding.set()
    threading.Event().wait()


def _log_table(db: Path) -> Any:
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE log (id INTEGER PRIMARY KEY, who TEXT NOT NULL, n INTEGER)"))
    return engine


def test_processes_writing_one_file_at_once_all_commit(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    engine = _log_table(db)
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    children = [spawn.Process(target=_write_rows, args=(f"sqlite:///{db}", f"p{p}", 4, 25, go)) for p in range(3)]
    for child in children:
        child.start()
    go.set()
    for child in children:
        child.join(START)
    assert [child.exitcode for child in children] == [0, 0, 0]  # an error ("database is locked") exits 1
    with engine.connect() as conn:
        written = conn.execute(text("SELECT who, n FROM log ORDER BY who, n")).all()
    # Every unit of work committed, and each read the rows its thread had committed before it.
    assert written == [(f"p{p}-{t}", n) for p in range(3) for t in range(4) for n in range(25)]
    assert (Path(f"{db}-writer.lock").stat().st_mode & 0o777) == 0o600
    engine.dispose()


def test_a_process_waits_for_the_turn_another_holds_and_writes_once_it_commits(tmp_path: Path) -> None:
    db = tmp_path / "turn.db"
    engine = _log_table(db)
    spawn = multiprocessing.get_context("spawn")
    waiting = spawn.Event()
    with engine.connect() as first:
        first.execute(text("INSERT INTO log (who) VALUES ('first')"))
        child = spawn.Process(target=_write_when_the_turn_comes, args=(f"sqlite:///{db}", waiting))
        child.start()
        try:
            assert waiting.wait(START)  # the child found the turn taken: it waits at the lock file
            first.execute(text("INSERT INTO log (who) VALUES ('first, again')"))
            first.commit()
        finally:
            child.join(START)
    assert child.exitcode == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT who FROM log ORDER BY id")).scalars().all() == [
            "first", "first, again", "second"]
    assert not _turn_taken(db)
    engine.dispose()


def test_a_forked_child_waits_for_the_turn_its_parent_holds(tmp_path: Path) -> None:
    """The child inherits the parent's open lock file and its thread lock, both held: it must wait at the lock file
    as any other process, not take the parent's flock as its own (one open file) nor wait on a thread lock nobody
    will release. (No SQLite connection is open across the fork: SQLite forbids it, turn or not.)"""
    db = tmp_path / "fork.db"
    _log_table(db).dispose()
    turn = sqlite_writes.connection_class(str(db), WAIT).turn  # type: ignore[attr-defined]
    assert turn.threads.acquire(timeout=WAIT)
    held = turn.take_file(sqlite_writes.monotonic() + WAIT)
    assert held is not None
    fork = multiprocessing.get_context("fork")
    waiting = fork.Event()
    child = fork.Process(target=_write_when_the_turn_comes, args=(f"sqlite:///{db}", waiting))
    child.start()
    try:
        assert waiting.wait(START)
        with sqlite3.connect(db) as plain:  # this process writes while it holds the turn
            plain.execute("INSERT INTO log (who) VALUES ('first')")
        plain.close()
    finally:
        held.give()
        turn.threads.release()
        child.join(START)
    assert child.exitcode == 0
    with sqlite3.connect(db) as plain:
        assert plain.execute("SELECT who FROM log ORDER BY id").fetchall() == [("first",), ("second",)]
    plain.close()
    assert not _turn_taken(db)


def test_a_process_killed_while_it_holds_the_turn_leaves_it_free(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    engine = _log_table(db)
    spawn = multiprocessing.get_context("spawn")
    holding = spawn.Event()
    child = spawn.Process(target=_hold_the_turn, args=(f"sqlite:///{db}", holding))
    child.start()
    try:
        assert holding.wait(START)
        assert _turn_taken(db)
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(START)
    assert child.exitcode == -signal.SIGKILL
    assert not _turn_taken(db)
    # A writer that may not wait at all takes the turn at its first try.
    impatient = sqlite3.connect(db, factory=sqlite_writes.connection_class(str(db), 0.0), timeout=WAIT)
    impatient.execute("INSERT INTO log (who) VALUES ('next')")
    assert impatient._held_file is not None  # type: ignore[attr-defined]
    impatient.commit()
    impatient.close()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT who FROM log")).scalars().all() == ["next"]
    engine.dispose()


def test_a_lock_file_that_cannot_be_opened_leaves_the_writes_to_sqlite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Something else at the lock file's name (here a folder): the writers still write, one thread at a time, and
    meet other processes in SQLite's busy handler as before the lock file existed; a warning says so once."""
    db = tmp_path / "nolock.db"
    Path(f"{db}-writer.lock").mkdir()
    conn = sqlite3.connect(db, factory=sqlite_writes.connection_class(str(db), WAIT), timeout=WAIT)
    with caplog.at_level("WARNING", logger="app.sqlite_writes"):
        for value in ("a", "b"):
            conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
            conn.execute("INSERT INTO t VALUES (?)", (value,))
            assert _gate(db).locked()
            conn.commit()
    assert not _gate(db).locked()
    assert conn.execute("SELECT v FROM t ORDER BY v").fetchall() == [("a",), ("b",)]
    conn.close()
    assert [record.getMessage() for record in caplog.records] == [
        f"SQLite writers' lock file {db}-writer.lock unavailable ([Errno 21] Is a directory: '{db}-writer.lock'): "
        "this process's writers meet other processes' in SQLite's busy handler"]

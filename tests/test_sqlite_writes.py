"""SQLite writers of one process take turns on a lock (app/sqlite_writes.py) instead of sleeping in SQLite's busy
handler: a waiting writer starts when the holder commits or rolls back, reads never wait, and nothing is held
after a transaction ends however it ends."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app import sqlite_writes
from app.db import make_engine

WAIT = 10.0  # seconds a step may take before the test fails (never reached when it passes)


def _gate(path: Path) -> threading.Lock:
    return sqlite_writes.connection_class(str(path), WAIT).gate


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
        assert _gate(db).locked()  # taken at the transaction's first write
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
    assert not _gate(db).locked()
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
        assert gate.locked()
        conn.rollback()
    assert not gate.locked()

    with engine.begin() as conn:  # a failing statement, then the rollback of the block
        conn.execute(text("INSERT INTO t (v) VALUES ('b')"))
    with pytest.raises(IntegrityError, match="UNIQUE"), engine.begin() as conn:
        conn.execute(text("INSERT INTO t (v) VALUES ('b')"))
    assert not gate.locked()

    with engine.connect() as conn:  # a connection returned to the pool mid-transaction is rolled back
        conn.execute(text("INSERT INTO t (v) VALUES ('c')"))
    assert not gate.locked()

    raw = sqlite3.connect(db, factory=sqlite_writes.connection_class(str(db), WAIT))  # closed mid-transaction
    raw.execute("INSERT INTO t (v) VALUES ('d')")
    assert gate.locked()
    raw.close()
    assert not gate.locked()

    auto = sqlite3.connect(db, factory=sqlite_writes.connection_class(str(db), WAIT), isolation_level=None)
    auto.execute("INSERT INTO t (v) VALUES ('e')")  # autocommit: no transaction stays open, nothing is held
    assert not gate.locked()
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
    assert not _gate(db).locked()


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
    assert not _gate(db).locked()

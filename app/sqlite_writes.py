"""One SQLite writer at a time per database file, across processes, queued on locks instead of in SQLite's busy handler.

SQLite lets one transaction write at a time. A second writer gets SQLITE_BUSY, and its busy handler sleeps and
tries again, 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms apart: under load a writer sleeps on long after the
lock is free, while the writer that holds it waits for the GIL between its statements. In `serve` with 32 web chat
visitors (benchmarks/e2e_widget.py, 2026-11-30) an INSERT took 0.16 ms of CPU and 0.18 ms of wall time at the
median, but 188 ms at p90 and 1.4 s at p99: the orchestrator's threads spent their time asleep in the busy handler.

Here writers take turns instead: a connection takes the turn just before its transaction's first write and gives
it back when the transaction commits or rolls back (or the connection closes), so the next writer starts as soon
as the turn is free. Reads never take it (WAL readers do not block). The turn is two locks, taken in this order:

- a `threading.Lock` per database file for this process's threads. Only the thread holding it goes on to
  the second lock, so a process's other writers wait here, woken at once when it is released;
- an exclusive `flock` on `<database>-writer.lock`, shared by every process writing the file (`serve`, its
  answerer processes, `switchboard chat`). The OS releases a flock when its process dies, so a writer killed
  while it holds the turn never blocks the others. flock cannot time out: a process polls it without blocking,
  sleeping 50 us, then twice as long each time up to 1 ms. That polling is cheap because only one thread per
  process polls, and a holder keeps the turn for one short transaction (0.2 ms for an INSERT). It is not fair:
  a process whose threads write back to back may take the turn again before a polling process looks.

The wait for both is the connection's own busy timeout, so a connection that lowers it for a best-effort write
(`PRAGMA busy_timeout=...`, app/auth.py's key last-use time) waits no longer for its turn than it would for
SQLite's lock. A writer that waits longer goes on without the turn (or with the thread lock only, which it keeps
until its transaction ends, as any holder does), and SQLite decides, as it did before the turn existed. The locks
only order writers: SQLite's own lock still guarantees that one transaction writes at a time.

flock belongs to an open file, which a forked child shares with its parent: a child would take the parent's lock
as its own and could release it. So a forked child closes the lock files it inherited and opens its own, and
starts with fresh thread locks (a parent's thread may have held one at the fork).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from time import monotonic, sleep
from typing import Any

from app.files import private_file

log = logging.getLogger(__name__)

_READS = ("SELECT", "PRAGMA", "EXPLAIN")
_BUSY_TIMEOUT = re.compile(r"\s*PRAGMA\s+busy_timeout\s*=\s*(\d+)", re.IGNORECASE)
FIRST_PAUSE_S = 50e-6  # the first pause between two tries at a lock file another process holds; then doubled,
LAST_PAUSE_S = 1e-3  # up to this


def _writes(sql: str) -> bool:
    return not sql.lstrip().upper().startswith(_READS)


class _LockFile:
    """`<database>-writer.lock`, opened once by this process and kept open."""

    def __init__(self, path: Path) -> None:
        private_file(path)  # 0600 from the moment it exists, like the database
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def take(self, deadline: float) -> bool:
        fd, pause = self.fd, FIRST_PAUSE_S
        if fd is None:
            return False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                left = deadline - monotonic()
                if left <= 0:
                    return False
                sleep(min(pause, left))
                pause = min(2 * pause, LAST_PAUSE_S)

    def give(self) -> None:
        if self.fd is not None:  # None: a parent's, closed in this forked child; nothing of ours to release
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


class WriterTurn:
    """The writers' turn on one database file: this process's thread lock, then the lock file of all processes."""

    def __init__(self, database: str) -> None:
        self.path = Path(os.path.abspath(f"{database}-writer.lock"))
        self.threads = threading.Lock()
        self._file: _LockFile | None = None  # touched only by the holder of `threads`
        self._warned = False

    def take_file(self, deadline: float) -> _LockFile | None:
        """With `threads` held: the lock file, if it is free before `deadline`."""
        if self._file is None:
            try:
                self._file = _LockFile(self.path)
            except OSError as exc:  # the writer goes on without the other processes' turn: SQLite decides
                if not self._warned:
                    self._warned = True
                    log.warning("SQLite writers' lock file %s unavailable (%s): this process's writers meet "
                                "other processes' in SQLite's busy handler", self.path, exc)
                return None
        return self._file if self._file.take(deadline) else None

    def _after_fork_in_child(self) -> None:
        if self._file is not None:
            self._file.close()  # closing our copy leaves the parent's lock, if it holds it, to the parent
            self._file = None
        self.threads = threading.Lock()


_turns: dict[str, WriterTurn] = {}
_turns_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _turns_lock
    _turns_lock = threading.Lock()
    for turn in _turns.values():
        turn._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def connection_class(database: str, wait_s: float) -> type[sqlite3.Connection]:
    """The `sqlite3.connect(factory=...)` for `database`: connections of every engine of this process on that file
    share one writers' turn, and take it with the other processes'."""
    with _turns_lock:
        turn = _turns.get(database)
        if turn is None:
            turn = _turns[database] = WriterTurn(database)
    return type("GatedConnection", (GatedConnection,), {"turn": turn, "wait_s": wait_s})


class GatedConnection(sqlite3.Connection):
    turn: WriterTurn
    wait_s: float
    # What this connection holds, kept as the very objects it took: it gives back those and nothing else (after a
    # fork the turn has new ones).
    _held_threads: threading.Lock | None = None
    _held_file: _LockFile | None = None

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or GatedCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        return self.cursor().executemany(sql, parameters)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()

    def _before(self, sql: str) -> None:
        if busy := _BUSY_TIMEOUT.match(sql):
            self.wait_s = int(busy[1]) / 1000
        if self._held_threads is None and _writes(sql):
            deadline = monotonic() + self.wait_s
            threads = self.turn.threads
            if threads.acquire(timeout=self.wait_s):
                self._held_threads = threads
                self._held_file = self.turn.take_file(deadline)

    def _after(self) -> None:
        # A statement that left no transaction open (it committed on its own, or failed before beginning one, or
        # the wait for the turn was interrupted) holds nothing.
        if self._held_threads is not None and not self.in_transaction:
            self._release()

    def _release(self) -> None:
        threads, file = self._held_threads, self._held_file
        self._held_threads = self._held_file = None
        try:
            if file is not None:
                file.give()
        finally:
            if threads is not None:
                threads.release()


class GatedCursor(sqlite3.Cursor):
    connection: GatedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        try:
            self.connection._before(sql)
            return super().execute(sql, parameters)
        finally:
            self.connection._after()

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        try:
            self.connection._before(sql)
            return super().executemany(sql, parameters)
        finally:
            self.connection._after()

    def executescript(self, script: str, /) -> Any:
        try:
            self.connection._before(script)
            return super().executescript(script)
        finally:
            self.connection._after()

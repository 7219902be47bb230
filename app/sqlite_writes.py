"""One SQLite writer at a time per process, queued on a lock instead of in SQLite's busy handler.

SQLite lets one transaction write at a time. A second writer gets SQLITE_BUSY, and its busy handler sleeps and
tries again, 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms apart: under load a writer sleeps on long after the
lock is free, while the writer that holds it waits for the GIL between its statements. In `serve` with 32 web chat
visitors (benchmarks/e2e_widget.py, 2026-11-30) an INSERT took 0.16 ms of CPU and 0.18 ms of wall time at the
median, but 188 ms at p90 and 1.4 s at p99: the orchestrator's threads spent their time asleep in the busy handler.

Here a process's writers queue on one lock per database file: a connection takes it just before its transaction's
first write and gives it back when the transaction commits or rolls back, so the next writer starts as soon as the
lock is free, in turn. Reads never take it (WAL readers do not block). Other processes (`switchboard chat` while
`serve` runs) still meet SQLite's busy handler; a writer that waits longer than the busy timeout for the lock goes
on without it, and SQLite decides, as it did before. The wait is the connection's own busy timeout, so a
connection that lowers it for a best-effort write (`PRAGMA busy_timeout=...`, app/auth.py's key last-use time)
waits no longer for its turn than it would for SQLite's lock.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

_READS = ("SELECT", "PRAGMA", "EXPLAIN")
_BUSY_TIMEOUT = re.compile(r"\s*PRAGMA\s+busy_timeout\s*=\s*(\d+)", re.IGNORECASE)
_gates: dict[str, threading.Lock] = {}
_gates_lock = threading.Lock()


def _writes(sql: str) -> bool:
    return not sql.lstrip().upper().startswith(_READS)


def connection_class(database: str, wait_s: float) -> type[sqlite3.Connection]:
    """The `sqlite3.connect(factory=...)` for `database`: connections of every engine of this process on that file
    share one write lock."""
    with _gates_lock:
        gate = _gates.setdefault(database, threading.Lock())
    return type("GatedConnection", (GatedConnection,), {"gate": gate, "wait_s": wait_s})


class GatedConnection(sqlite3.Connection):
    gate: threading.Lock
    wait_s: float
    _holding = False

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
        if not self._holding and _writes(sql):
            self._holding = self.gate.acquire(timeout=self.wait_s)

    def _after(self) -> None:
        # A statement that left no transaction open (it committed on its own, or failed before beginning one)
        # holds nothing.
        if self._holding and not self.in_transaction:
            self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self.gate.release()


class GatedCursor(sqlite3.Cursor):
    connection: GatedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        self.connection._before(sql)
        try:
            return super().execute(sql, parameters)
        finally:
            self.connection._after()

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        self.connection._before(sql)
        try:
            return super().executemany(sql, parameters)
        finally:
            self.connection._after()

    def executescript(self, script: str, /) -> Any:
        self.connection._before(script)
        try:
            return super().executescript(script)
        finally:
            self.connection._after()

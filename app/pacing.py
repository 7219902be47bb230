"""Answering threads take turns at the CPU, oldest message first.

A process answers many messages at once on threads (app/bus/concurrent.py), and the GIL lets one of them run
Python at a time, switching between them every few milliseconds. When 64 customers ask at once, that round-robin
gives each message a sliver in turn, so all 64 finish their work late and together, each having waited on the
other 63 twice (before and after its LLM call), and every switch costs CPU of its own.

A `Pacer` lets at most `slots` handlers run at once and hands a free slot to the oldest message that wants one.
A handler steps out while it waits, for the LLM or for a model call (`waiting()`, used where those calls are
made), and steps back in ahead of every message that came after it. So the first customers' replies go out first,
the LLM calls of a burst start as soon as each message is ready instead of all at the end, and a slow LLM (or a
tenant's stalled one) holds no slot at all.

`waiting()` is free of any pacer knowledge at its call site: it steps out only when the calling thread holds a
slot, so the same code runs unpaced in tests, the CLI and ingestion. A step-out must never be taken while the
thread holds a lock that another slot holder could wait for (a database write transaction): the LLM and model
calls it wraps happen outside any transaction (app/assistant/orchestrator.py, phase 2).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Pacer:
    def __init__(self, slots: int) -> None:
        """`slots`: handlers running Python at once; 0 turns pacing off (every handler runs as it comes)."""
        if slots < 0:
            raise ValueError("slots must be 0 (off) or more")
        self.slots = slots
        self._free = slots
        self._lock = threading.Lock()
        self._queue: list[tuple[int, threading.Lock]] = []  # (ticket, a lock its waiter blocks on), oldest first
        self._tickets = itertools.count()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """One message's handling: it waits for a slot, holds it but while `waiting()`, and frees it at the end."""
        if not self.slots or getattr(_held, "pacer", None) is not None:
            yield  # off, or a nested turn of a thread that already has one
            return
        ticket = next(self._tickets)
        self._acquire(ticket)
        _held.pacer, _held.ticket = self, ticket
        try:
            yield
        finally:
            _held.pacer = None
            self._release()

    @property
    def waiting_for_slot(self) -> int:
        with self._lock:
            return len(self._queue)

    def _acquire(self, ticket: int) -> None:
        with self._lock:
            if self._free and not self._queue:
                self._free -= 1
                return
            waiter = threading.Lock()
            waiter.acquire()
            heapq.heappush(self._queue, (ticket, waiter))
        waiter.acquire()  # released by `_release`, which hands its slot over to this ticket

    def _release(self) -> None:
        with self._lock:
            if self._queue:
                heapq.heappop(self._queue)[1].release()
            else:
                self._free += 1


_held = threading.local()  # .pacer and .ticket of the slot this thread holds


@contextmanager
def waiting() -> Iterator[None]:
    """Around a blocking call (the LLM, a model call): the calling thread's slot goes to the oldest message that
    wants one meanwhile, and the thread gets it back, ahead of newer messages, once the call returns."""
    pacer: Pacer | None = getattr(_held, "pacer", None)
    if pacer is None:
        yield
        return
    _held.pacer = None  # a nested `waiting()` does nothing
    pacer._release()
    try:
        yield
    finally:
        pacer._acquire(_held.ticket)
        _held.pacer = pacer

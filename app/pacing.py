"""Answering threads take turns at the CPU, first come, first served.

A process answers many messages at once on threads (app/bus/concurrent.py), and the GIL lets one of them run
Python at a time, switching between them every few milliseconds. When 64 customers ask at once, that round-robin
gives each message a sliver in turn, so all 64 finish their work late and together, and every switch costs CPU of
its own.

A `Pacer` lets at most `slots` handlers run at once; the others queue for a slot in the order they asked. A
handler steps out while it waits, for the LLM or for a model call (`waiting()`, used where those calls are made),
and queues again when the call returns. So a burst's LLM calls start one after another as each message is ready,
instead of all at the end, fewer threads switch in and out, and a slow LLM (or a tenant's stalled one) holds no
slot at all.

Why plain arrival order: giving a slot back to a returning handler first (oldest message first) answered a single
burst as fast, but under a steady load with a 1 s LLM it held back new messages' LLM calls behind the replies of
older ones, and 64 customers in a closed loop got 24% fewer replies per second (docs/benchmarks.md, "Eighth pass").

`waiting()` needs no pacer at its call site: it steps out only when the calling thread holds a slot, so the same
code runs unpaced in tests, the CLI and ingestion. A step-out must never be taken while the thread holds a lock
that another slot holder could wait for (a database write transaction): the LLM and model calls it wraps happen
outside any transaction (app/assistant/orchestrator.py, phase 2).
"""

from __future__ import annotations

import threading
from collections import deque
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
        self._queue: deque[threading.Lock] = deque()  # a lock each waiting thread blocks on, in arrival order

    @contextmanager
    def turn(self) -> Iterator[None]:
        """One message's handling: it queues for a slot, holds it but while `waiting()`, and frees it at the end."""
        if not self.slots or getattr(_held, "pacer", None) is not None:
            yield  # off, or a nested turn of a thread that already has one
            return
        self._acquire()
        _held.pacer = self
        try:
            yield
        finally:
            _held.pacer = None
            self._release()

    @property
    def waiting_for_slot(self) -> int:
        with self._lock:
            return len(self._queue)

    def _acquire(self) -> None:
        with self._lock:
            if self._free and not self._queue:
                self._free -= 1
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._queue.append(waiter)
        waiter.acquire()  # released by `_release`, which hands its slot over to this thread

    def _release(self) -> None:
        with self._lock:
            if self._queue:
                self._queue.popleft().release()
            else:
                self._free += 1


_held = threading.local()  # .pacer: whose slot this thread holds


@contextmanager
def waiting() -> Iterator[None]:
    """Around a blocking call (the LLM, a model call): the calling thread's slot goes to the next thread in the
    queue meanwhile, and the thread queues for one again once the call returns."""
    pacer: Pacer | None = getattr(_held, "pacer", None)
    if pacer is None:
        yield
        return
    _held.pacer = None  # a nested `waiting()` does nothing
    pacer._release()
    try:
        yield
    finally:
        pacer._acquire()
        _held.pacer = pacer

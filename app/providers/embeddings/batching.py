"""Micro-batching: many threads each asking for one small inference, served by as few model calls as possible.

A caller that finds no batch running becomes the leader: it takes everything queued (up to `max_batch`), runs it
in one call, hands out the results and repeats until its own item is done; then the next waiting caller leads.
So requests that arrive while a batch runs are embedded together in the next one, and a lone request runs at
once. When the previous batch held more than one item (callers are arriving together), the leader first waits
`window_s` for stragglers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Slot(Generic[T, R]):
    item: T
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    calls: int = 0  # model calls made
    items: int = 0
    largest: int = 0

    def record(self, size: int) -> None:
        self.calls += 1
        self.items += size
        self.largest = max(self.largest, size)


@dataclass
class MicroBatcher(Generic[T, R]):
    """`run(items)` must return one result per item, in order; if it raises, every caller in that batch gets the
    error."""

    run: Callable[[list[T]], list[R]]
    max_batch: int = 32
    window_s: float = 0.002
    stats: BatchStats = field(default_factory=BatchStats)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)
    _queue: list[_Slot[T, R]] = field(default_factory=list, init=False, repr=False)
    _leading: bool = field(default=False, init=False, repr=False)
    _last_size: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")

    @property
    def waiting(self) -> int:
        """Items queued for the next batch."""
        with self._cond:
            return len(self._queue)

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._cond:
            self._queue.append(slot)
            while self._leading and not slot.done:
                self._cond.wait()
            if not slot.done:
                self._leading = True
        if not slot.done:
            self._lead(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set by the batch that held it

    def _lead(self, mine: _Slot[T, R]) -> None:
        try:
            if self.window_s > 0 and self._last_size > 1:
                time.sleep(self.window_s)  # others are arriving together: let the stragglers join
            while not mine.done:
                with self._cond:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                self._run_batch(batch)
                with self._cond:
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()  # a caller still waiting becomes the next leader

    def _run_batch(self, batch: list[_Slot[T, R]]) -> None:
        self._last_size = len(batch)
        self.stats.record(len(batch))
        try:
            results = self.run([slot.item for slot in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:
            for slot in batch:
                slot.error, slot.done = exc, True
            return
        for slot, result in zip(batch, results, strict=True):
            slot.result, slot.done = result, True

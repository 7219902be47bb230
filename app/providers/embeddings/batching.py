"""Micro-batching: many threads each asking for one small inference, served by as few model calls as possible.

A caller that finds fewer than `max_leaders` batches running becomes a leader: it takes its own item and the
oldest others queued (up to `max_batch` in all), runs them in one call and hands out the results; then a waiting
caller leads. So requests that arrive while batches run are embedded together in the next one, and a lone
request runs at once. With `max_leaders` > 1, that many calls run side by side: a model that releases the GIL
(onnxruntime) then uses as many cores. When the previous batch held more than one item (callers are arriving
together), a leader first waits `window_s` for stragglers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app import pacing

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)  # compared by identity: two callers may ask for equal items
class _Slot(Generic[T, R]):
    item: T
    taken: bool = False  # in a batch (running, or done)
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
    max_leaders: int = 1  # batches running at once
    stats: BatchStats = field(default_factory=BatchStats)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)
    _queue: list[_Slot[T, R]] = field(default_factory=list, init=False, repr=False)
    _leaders: int = field(default=0, init=False, repr=False)
    _last_size: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.max_leaders < 1:
            raise ValueError("max_leaders must be at least 1")

    @property
    def waiting(self) -> int:
        """Items queued for the next batch."""
        with self._cond:
            return len(self._queue)

    def submit(self, item: T) -> R:
        with pacing.waiting():  # a paced handler's slot is free while it waits for (or runs) the batch
            return self._submit(item)

    def _submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._cond:
            self._queue.append(slot)
            while not slot.taken and self._leaders >= self.max_leaders:
                self._cond.wait()
            lead = not slot.taken
            if lead:
                self._leaders += 1
            else:
                while not slot.done:  # in another leader's batch
                    self._cond.wait()
        if lead:
            self._lead(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set by the batch that held it

    def _lead(self, mine: _Slot[T, R]) -> None:
        try:
            if self.window_s > 0 and self._last_size > 1:
                time.sleep(self.window_s)  # others are arriving together: let the stragglers join
            with self._cond:
                if not mine.taken:  # (another leader may have taken it meanwhile) it goes in this batch
                    self._queue.remove(mine)
                    self._queue.insert(0, mine)
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                for slot in batch:
                    slot.taken = True
                if batch:
                    self._last_size = len(batch)
                    self.stats.record(len(batch))
            if batch:
                self._run_batch(batch)
        finally:
            with self._cond:
                self._leaders -= 1
                self._cond.notify_all()  # results are out; a caller still waiting becomes the next leader
            with self._cond:
                while mine.taken and not mine.done:  # taken by another leader while this one waited
                    self._cond.wait()

    def _run_batch(self, batch: list[_Slot[T, R]]) -> None:
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

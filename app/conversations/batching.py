"""Group commit for the gateways' durable enqueue: many concurrent `accept_inbound` calls, one transaction.

Sequentially, each inbound message costs a handful of SQL round trips, a commit (an fsync on Postgres) and an
XADD. Under load, a gateway process receives many messages at once; `InboundBatcher` hands them to one writer
thread, which stores everything queued (up to `max_batch`, waiting at most `max_wait_s` for stragglers) with
set-based statements in one transaction, publishes the events in one pipelined round trip, and only then wakes
each caller with its `Accepted`. The guarantees are `accept_inbound`'s:

- a caller returns only after its message and its event (in the outbox, app/outbox.py) are committed and a
  publish of the event was attempted (the gateway may answer 2xx);
- one row and one bus entry per (tenant, channel, provider message id), within a batch and across batches and
  processes; a duplicate gets `duplicate=True` and the original's ids;
- a batch whose events the bus refuses still succeeds: they are committed in the outbox, and a relay publishes
  them once the bus is back.

A batch whose database transaction fails is rolled back and retried one request at a time, so one bad message
(say, an over-long id the database rejects) fails alone rather than taking its batch-mates with it.

The outbox entries a batch published are deleted in the next batch's transaction (or, when none comes, after
`FORGET_AFTER_S`): under load, one commit per batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace

from app import outbox, tracing
from app.bus.base import Bus
from app.conversations.service import Accepted, InboundRequest, Stored, store_inbound
from app.db import get_sessionmaker

log = logging.getLogger(__name__)

MAX_BATCH = 64
MAX_WAIT_S = 0.002
IDLE_EXIT_S = 30.0  # an idle writer thread exits; the next request starts a new one
# Published outbox entries are deleted with the next batch's commit, or after this long without one: well within
# the grace relays give their writer (app/outbox.py), so they do not publish them again.
FORGET_AFTER_S = 0.5


@dataclass
class BatchStats:
    """What the writer has done so far (for benchmarks and debugging)."""

    batches: int = 0
    requests: int = 0
    failed_batches: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def record(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.sizes[size] = self.sizes.get(size, 0) + 1


_Item = tuple[InboundRequest, "Future[Accepted]"]


class InboundBatcher:
    """One writer thread per bus per process. `accept` blocks its caller until the batch holding its request
    is committed and published. The writer keeps the database the batcher was built with: after its last batch
    it may still delete outbox entries, and must not do so in whatever database the process uses by then."""

    def __init__(self, bus: Bus, *, max_batch: int = MAX_BATCH, max_wait_s: float | None = None,
                 idle_exit_s: float = IDLE_EXIT_S) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.bus = bus
        self.max_batch = max_batch
        self.max_wait_s = MAX_WAIT_S if max_wait_s is None else max_wait_s
        self.idle_exit_s = idle_exit_s
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._published: list[outbox.Pending] = []  # to delete from the outbox (the writer thread's own)
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._sessions = get_sessionmaker()

    def accept(self, request: InboundRequest) -> Accepted:
        """Store and publish one message as part of the next batch; raises what failed its batch."""
        return self.accept_all([request])[0]

    def accept_all(self, requests: list[InboundRequest]) -> list[Accepted]:
        """Several messages (one webhook delivery's), queued together; returns once all are stored and
        published, or raises the first failure."""
        return [future.result() for future in self.submit_all(requests)]

    def submit_all(self, requests: list[InboundRequest]) -> list[Future[Accepted]]:
        """Queue messages without waiting: each future resolves once its batch is stored and published. Lets an
        async caller await the batch (`asyncio.wrap_future`) instead of parking a thread on it."""
        for request in requests:
            request.event()  # validate in the caller's thread: a malformed request never joins a batch
        if tracing.enabled():  # the writer thread publishes the events in the caller's trace
            here = tracing.carrier()
            requests = [r if r.trace_context is not None else replace(r, trace_context=here) for r in requests]
        futures: list[Future[Accepted]] = [Future() for _ in requests]
        with self._lock:
            for item in zip(requests, futures, strict=True):
                self._queue.put(item)
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="inbound-batcher", daemon=True)
                self._writer.start()
        return futures

    # -- the writer thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=FORGET_AFTER_S if self._published else self.idle_exit_s)
            except queue.Empty:
                if self._published:  # no batch to delete them with
                    outbox.forget(self._published, self._sessions)
                    self._published = []
                    continue
                with self._lock:  # `accept` starts a writer under this lock, so no request is stranded
                    if self._queue.empty():
                        self._writer = None
                        return
                continue
            batch = self._collect(first)
            try:
                self._write(batch)
            except Exception as exc:  # a bug, not a failed batch (those reach their callers): the writer lives on
                log.exception("the inbound writer failed a batch; carrying on")
                for _, future in batch:
                    _settle(future, exc)  # no caller waits for ever (those already answered keep their answer)

    def _collect(self, first: _Item) -> list[_Item]:
        """Everything already queued, then whatever arrives within `max_wait_s`, up to `max_batch`."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[_Item]) -> None:
        """Never raises: every outcome, success or failure, goes to the callers' futures."""
        self.stats.record(len(batch))
        try:
            results = self._store([request for request, _ in batch])
        except Exception as exc:  # handed to every caller; the writer carries on
            self.stats.failed_batches += 1
            log.warning("inbound batch of %d failed: %s", len(batch), exc)
            for _, future in batch:
                _settle(future, exc)
            return
        pending = [s.pending for s in results if isinstance(s, Stored) and s.pending is not None]
        if outbox.send(self.bus, pending):  # if not, the outbox relay publishes them
            self._published.extend(pending)  # deleted with the next commit
        for (_, future), stored in zip(batch, results, strict=True):
            _settle(future, stored.accepted if isinstance(stored, Stored) else stored)

    def _store(self, requests: list[InboundRequest]) -> list[Stored | Exception]:
        """Stores, and deletes the entries published since the last commit with it (kept if it rolls back)."""
        try:
            results: list[Stored | Exception] = list(store_inbound(requests, published=self._published,
                                                                    sessions=self._sessions))
            self._published = []
            return results
        except Exception as exc:
            if len(requests) == 1:
                raise
            log.warning("inbound batch of %d failed to store (%s); retrying its requests one by one",
                        len(requests), exc)
        results = []
        for request in requests:
            try:
                results.extend(store_inbound([request], published=self._published, sessions=self._sessions))
                self._published = []
            except Exception as exc:  # this request's own failure, reported to its caller
                results.append(exc)
        return results


def _settle(future: Future[Accepted], outcome: Accepted | Exception) -> None:
    """Hands a caller its outcome, unless it stopped waiting (an async caller's await was cancelled, which cancels
    the future): its message is stored and published all the same."""
    try:
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass

"""A consumer that handles many entries at once on a bounded pool of threads (the orchestrator's).

The handlers are synchronous and spend most of their time waiting (an LLM answer takes seconds), so one
process runs up to `concurrency` of them in threads, with three rules:
- **order per key**: entries with the same `key(delivery)` (the orchestrator's: tenant and conversation) run one
  at a time, in the order they were read; different keys run side by side;
- **fairness**: the next entry to start is taken round-robin across tenants, and one tenant never runs more
  than `tenant_concurrency` at once, so a tenant whose LLM stalls leaves the other workers to everyone else;
- **back-pressure**: at most `concurrency` entries are held (read and not yet settled), at most
  `tenant_concurrency` of one tenant; the reader stops reading (or skips that tenant's streams) until one is
  settled, so memory stays bounded when every handler blocks.
Settling is the same as `Consumer`'s (acks after the handler returned, batched; `PermanentFailure` dead-letters;
`max_deliveries`), but for a failed entry with `retry_in_place` (the orchestrator's and the dispatcher's): it is
retried here after `retry_delay_ms`, its key busy meanwhile, so a conversation's later messages never overtake it
(left for a reclaim, it came back ~claim_idle_ms later, after them). Each retry counts as a delivery, so one that
keeps failing is dead-lettered after `max_deliveries`, then the key's next entry starts. At most a quarter of
`concurrency` wait so; past that a failed entry is left for a reclaim: failing conversations never crowd out
working ones. Shutdown is `Consumer`'s: after `stop`, running handlers finish and nothing new starts. Entries held
here are kept claimed (`Bus.keep_alive`) while they wait, and while their handler runs for up to
`KEEP_RUNNING_ALIVE_S`, so another replica does not take over a conversation's next message meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from app.bus.base import BusUnavailable, Delivery
from app.bus.consumer import BatchResult, Consumer

log = logging.getLogger(__name__)

KeyFn = Callable[[Delivery], str]
# A handler that has run this long is presumed stuck: its entry is no longer kept alive, so it goes stale and
# another consumer reclaims it, as with the one-at-a-time consumer.
KEEP_RUNNING_ALIVE_S = 300.0
# How long the reader blocks on the bus while some tenant is skipped (at its limit): a slot that frees up is
# noticed within this time.
SKIP_BLOCK_MS = 50

_Ref = tuple[str, str]  # (tenant, entry id)
_Key = tuple[str, str]  # (tenant, ordering key)


@dataclass
class _Held:
    delivery: Delivery
    key: _Key
    started: float | None = None  # time.monotonic() when its handler started
    retry_at: float | None = None  # time.monotonic() when a failed entry is retried


@dataclass
class ConcurrentConsumer(Consumer):
    concurrency: int = 64
    tenant_concurrency: int | None = None  # None: `concurrency`
    key: KeyFn = field(default=lambda d: d.id)  # entries with equal keys (within a tenant) run in order
    retry_in_place: bool = False  # a failed entry retried here, its key held meanwhile (module docstring)
    retry_delay_ms: int | None = None  # how long a failed entry waits for its retry; None: `claim_idle_ms`
    # Runs once `run` has stopped and its handlers have finished (the orchestrator's outbox publisher deletes
    # what it published, instead of leaving it to a relay that would publish it again); its errors are logged.
    after_stop: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _work_ready: threading.Condition = field(init=False, repr=False)  # workers wait here for an entry
    _settled: threading.Condition = field(init=False, repr=False)  # the reader waits here for room
    _held: dict[_Ref, _Held] = field(default_factory=dict, init=False, repr=False)
    _held_by_tenant: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    _running_by_tenant: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    _waiting: dict[_Key, deque[_Held]] = field(default_factory=dict, init=False, repr=False)
    _busy_keys: set[_Key] = field(default_factory=set, init=False, repr=False)
    _retrying: dict[_Ref, _Held] = field(default_factory=dict, init=False, repr=False)  # failed, key still busy
    _ready: dict[str, deque[_Key]] = field(default_factory=dict, init=False, repr=False)  # tenant -> keys
    _turns: deque[str] = field(default_factory=deque, init=False, repr=False)  # tenants with ready keys
    _totals: BatchResult = field(default_factory=BatchResult, init=False, repr=False)
    _closing: bool = field(default=False, init=False, repr=False)
    _workers: list[threading.Thread] = field(default_factory=list, init=False, repr=False)
    _acks: list[Delivery] = field(default_factory=list, init=False, repr=False)
    _acking: bool = field(default=False, init=False, repr=False)
    _ack_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _last_keep_alive: float = field(default_factory=time.monotonic, init=False, repr=False)
    _reading: bool = field(default=False, init=False, repr=False)  # the reader waits for the bus
    _settled_meanwhile: set[_Ref] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self._work_ready = threading.Condition(self._lock)
        self._settled = threading.Condition(self._lock)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        per_tenant = self.tenant_concurrency or self.concurrency
        if per_tenant < 1:
            raise ValueError("tenant_concurrency must be at least 1")
        self.tenant_concurrency = min(per_tenant, self.concurrency)

    # -- introspection ---------------------------------------------------------------------------------
    @property
    def held(self) -> int:
        """Entries read and not yet settled (queued, running, or failed and waiting for their retry)."""
        with self._lock:
            return len(self._held)

    @property
    def running(self) -> int:
        with self._lock:
            return sum(self._running_by_tenant.values())

    @property
    def totals(self) -> BatchResult:
        """Everything settled since the consumer was created."""
        with self._lock:
            return BatchResult(self._totals.acked, self._totals.failed, self._totals.dead)

    # -- the reader ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Read and schedule until `stop` is set; then let running handlers finish (queued entries stay pending
        for a reclaim) and flush their acks."""
        log.info("consumer %s/%s on %s started (%d at once, %d per tenant)", self.group, self.name, self.topic,
                 self.concurrency, self.tenant_concurrency)
        self._ensure_group()
        self._start_workers()
        delay = 0.0
        try:
            while not self.stop.is_set():
                try:
                    self.fill(block_ms=self.block_ms)
                    delay = 0.0
                except BusUnavailable as exc:
                    delay = min(max(delay * 2, 0.1), self.backoff_cap_s)
                    log.warning("bus unavailable (%s); retrying in %.1fs", exc, delay)
                    self.stop.wait(delay)
                except Exception:
                    delay = min(max(delay * 2, 0.1), self.backoff_cap_s)
                    log.exception("consumer %s/%s loop error; retrying in %.1fs", self.group, self.name, delay)
                    self.stop.wait(delay)
        finally:
            self._stop_workers()
            if self.after_stop is not None:
                try:
                    self.after_stop()
                except Exception:
                    log.exception("consumer %s/%s: its after-stop hook failed", self.group, self.name)
        log.info("consumer %s/%s on %s stopped", self.group, self.name, self.topic)

    def fill(self, *, block_ms: int) -> int:
        """Read (or reclaim, when a claim is due) as many entries as fit and queue them; when nothing fits, wait
        up to 0.25 s for a settlement and return 0. Returns how many were queued."""
        self._retry_due()
        self._keep_held_alive()
        claim = time.monotonic() - self._last_claim >= self.claim_interval_s
        return len(self._take(block_ms=block_ms, claim=claim))

    def _take(self, *, block_ms: int, claim: bool, read: bool = True) -> list[Delivery]:
        """Reclaim (when `claim`) or else read what fits, queue it and return it (without the entries already
        held here)."""
        with self._lock:
            if not self._room() and not self.stop.is_set():
                self._settled.wait(0.25)
            if not self._room() or self.stop.is_set():
                return []  # full: back to the caller, which keeps what it holds alive meanwhile
            skip = self._full_tenants()
            # A read must not take more of any tenant than it may still hold: one stream can fill a whole read.
            most = max((n for t, n in self._held_by_tenant.items() if t not in skip), default=0)
            assert self.tenant_concurrency is not None
            count = min(self._room(), self.batch_size, self.tenant_concurrency - most)
            self._reading = True
        batch: list[Delivery] = []
        try:
            if claim:
                self._last_claim = time.monotonic()
                batch = self.bus.claim_stale(
                    self.topic, self.group, self.name, min_idle_ms=self.claim_idle_ms, count=count
                )
            if not batch and read:
                block = min(block_ms, SKIP_BLOCK_MS) if skip else block_ms
                batch = self.bus.read(self.topic, self.group, self.name, count=count, block_ms=block, skip=skip)
            return self.submit(batch)
        finally:
            with self._lock:
                self._reading = False
                self._settled_meanwhile.clear()

    def _room(self) -> int:
        return self.concurrency - len(self._held)

    def _full_tenants(self) -> set[str]:
        assert self.tenant_concurrency is not None
        return {t for t, n in self._held_by_tenant.items() if n >= self.tenant_concurrency}

    def submit(self, batch: list[Delivery]) -> list[Delivery]:
        """Queue entries for the workers (in order per key); returns those queued. An entry already held here
        (reclaimed from ourselves) is not queued twice."""
        queued = []
        with self._lock:
            for delivery in batch:
                ref = (delivery.tenant_id, delivery.id)
                if ref in self._held or ref in self._settled_meanwhile:  # a claim answered just before an ack
                    continue
                key = (delivery.tenant_id, self._key_of(delivery))
                held = _Held(delivery, key)
                self._held[ref] = held
                self._held_by_tenant[delivery.tenant_id] += 1
                waiting = self._waiting.setdefault(key, deque())
                waiting.append(held)
                if len(waiting) == 1 and key not in self._busy_keys:
                    self._make_ready(key)
                queued.append(delivery)
        return queued

    def _key_of(self, delivery: Delivery) -> str:
        try:
            return self.key(delivery)
        except Exception:  # an unreadable entry: alone in its queue; the handler dead-letters it
            return f"entry:{delivery.id}"

    def _keep_held_alive(self) -> None:
        now = time.monotonic()
        if now - self._last_keep_alive < self.claim_interval_s:
            return
        self._last_keep_alive = now
        with self._lock:
            held = [h.delivery for h in self._held.values()
                    if h.started is None or now - h.started < KEEP_RUNNING_ALIVE_S]
        if held:
            self.bus.keep_alive(self.group, self.name, held)

    # -- scheduling (under self._lock) -----------------------------------------------------------------
    def _make_ready(self, key: _Key) -> None:
        tenant = key[0]
        self._ready.setdefault(tenant, deque()).append(key)
        if tenant not in self._turns:
            self._turns.append(tenant)
        self._work_ready.notify()  # one worker, not all: the rest sleep on

    def _next(self) -> _Held | None:
        """The next entry to start: tenants take turns; a tenant at its limit waits for one of its own."""
        assert self.tenant_concurrency is not None
        for _ in range(len(self._turns)):
            tenant = self._turns[0]
            self._turns.rotate(-1)
            if self._running_by_tenant[tenant] >= self.tenant_concurrency:
                continue
            keys = self._ready[tenant]
            key = keys.popleft()
            if not keys:
                del self._ready[tenant]
                self._turns.remove(tenant)
            held = self._waiting[key].popleft()
            self._busy_keys.add(key)
            self._running_by_tenant[tenant] += 1
            held.started = time.monotonic()
            return held
        return None

    def _finish(self, held: _Held, outcome: str) -> None:
        key, tenant = held.key, held.key[0]
        self._running_by_tenant[tenant] -= 1
        if outcome == "failed":
            self._totals.failed += 1
        if outcome == "failed" and self.retry_in_place and len(self._retrying) < self._retry_cap():
            self._retry_later(held)
        else:
            self._busy_keys.discard(key)
            if self._waiting[key]:
                self._make_ready(key)
            else:
                del self._waiting[key]
        if outcome in ("dead", "failed") and held.retry_at is None:  # no longer ours: dead, or left for a reclaim
            self._release(held.delivery)
            if outcome == "dead":
                self._totals.dead += 1
        if outcome != "ok":  # the ok ones are settled by their ack
            self._settled.notify_all()
        if self._turns:  # an entry of a tenant that was at its limit may start now
            self._work_ready.notify()

    def _retry_cap(self) -> int:
        return max(1, self.concurrency // 4)  # failed entries waiting for their retry at once (module docstring)

    def _retry_later(self, held: _Held) -> None:
        """A failed entry stays held (kept alive), its key busy, until its retry (`_retry_due`): its next delivery,
        at once when this was its last allowed one (the retry dead-letters it: its key need not wait for that)."""
        last = held.delivery.deliveries >= self.max_deliveries
        delay_ms = 0 if last else self.claim_idle_ms if self.retry_delay_ms is None else self.retry_delay_ms
        held.started = None
        held.retry_at = time.monotonic() + delay_ms / 1000
        held.delivery = replace(held.delivery, deliveries=held.delivery.deliveries + 1)
        self._retrying[(held.delivery.tenant_id, held.delivery.id)] = held

    def _retry_due(self) -> None:
        """Put the failed entries whose retry is due back at the head of their key's queue."""
        now = time.monotonic()
        with self._lock:
            for ref, held in list(self._retrying.items()):
                if held.retry_at is not None and held.retry_at <= now:
                    del self._retrying[ref]
                    held.retry_at = None
                    self._waiting.setdefault(held.key, deque()).appendleft(held)
                    self._busy_keys.discard(held.key)
                    self._make_ready(held.key)

    def _only_retries_left(self) -> bool:
        """Every entry held here waits for a failed entry's retry (or is that entry): nothing can run now."""
        blocked = sum(1 + len(self._waiting.get(h.key, ())) for h in self._retrying.values())
        return len(self._held) <= blocked

    def _release(self, delivery: Delivery) -> None:
        ref = (delivery.tenant_id, delivery.id)
        if self._reading:
            self._settled_meanwhile.add(ref)
        if self._held.pop(ref, None) is not None:
            self._held_by_tenant[delivery.tenant_id] -= 1
            if not self._held_by_tenant[delivery.tenant_id]:
                del self._held_by_tenant[delivery.tenant_id]

    # -- the workers -----------------------------------------------------------------------------------
    def _start_workers(self) -> None:
        with self._lock:
            self._closing = False
        self._workers = [
            threading.Thread(target=self._work, name=f"{self.name}-w{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for worker in self._workers:
            worker.start()

    def _stop_workers(self) -> None:
        with self._lock:
            self._closing = True
            self._work_ready.notify_all()
        for worker in self._workers:
            worker.join()
        self._workers = []
        with self._lock:  # what never started stays pending on the bus (claim_stale hands it out again)
            self._held.clear()
            self._held_by_tenant.clear()
            self._waiting.clear()
            self._busy_keys.clear()
            self._retrying.clear()
            self._ready.clear()
            self._turns.clear()

    def _work(self) -> None:
        while True:
            with self._lock:
                held = None
                while not self._closing and not self.stop.is_set():
                    held = self._next()
                    if held is not None:
                        break
                    self._work_ready.wait()
                if held is None:
                    return
            outcome = "failed"
            try:
                outcome = self._handle_one(held.delivery)
            except Exception:  # the bus failed while settling (dead_letter, record_failure): a reclaim retries
                log.exception("settling %s entry %s failed", self.topic, held.delivery.id)
            finally:
                with self._lock:
                    self._finish(held, outcome)
            if outcome == "ok":
                self._ack_soon(held.delivery)

    def _ack_soon(self, delivery: Delivery) -> None:
        """Acks go out in batches: the worker that finds no ack in flight sends everything finished so far,
        the others only add to the list."""
        with self._ack_lock:
            self._acks.append(delivery)
            if self._acking:
                return
            self._acking = True
        while True:
            with self._ack_lock:
                batch, self._acks = self._acks, []
                if not batch:
                    self._acking = False
                    return
            try:
                self._ack(batch)
            except Exception:  # shutting down with the bus away, or a bus error: they will be redelivered
                log.exception("acking %d %s entries failed; they will be redelivered", len(batch), self.topic)
            finally:
                with self._lock:
                    for done in batch:
                        self._release(done)
                    self._totals.acked += len(batch)
                    self._settled.notify_all()

    # -- draining --------------------------------------------------------------------------------------
    def process_available(self, *, max_batches: int = 10_000) -> BatchResult:
        """Handle everything available right now, concurrently, and return once all of it is settled. For
        tests, the CLI and draining on shutdown. A failed entry is not retried here: it, and its key's entries
        behind it, are left pending for a reclaim (which hands them out again in order)."""
        before = self.totals
        self._start_workers()
        try:
            claim_due = True  # a claim sweeps every tenant's stream: once, and again only while it finds entries
            for _ in range(max_batches):
                self._keep_held_alive()
                with self._lock:
                    if not self._room() and not self.stop.is_set():
                        if self._only_retries_left():
                            break
                        self._settled.wait(0.25)
                        continue
                claimed = self._take(block_ms=0, claim=True, read=False) if claim_due else []
                claim_due = bool(claimed)
                queued = claimed or self._take(block_ms=0, claim=False)
                with self._lock:
                    if self.stop.is_set() or (not queued and self._only_retries_left()):
                        break
                    if not queued:  # nothing new (or only tenants at their limit): wait for a settlement
                        self._settled.wait(0.25)
        finally:
            self._stop_workers()
        after = self.totals
        return BatchResult(after.acked - before.acked, after.failed - before.failed, after.dead - before.dead)

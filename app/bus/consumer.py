"""The one consumer loop every bus reader uses (orchestrator, outbound sender, embedded threads, CLI).

Per batch: take over stale entries now and then, read new ones, run the handler on each, and ack the
successes together at the end. What happens to an entry:
- handler returns                      -> acked (in the batch's single ack)
- handler raises `PermanentFailure`    -> dead-lettered at once with its reason
- handler raises anything else         -> logged with traceback, reason recorded on the bus, left pending;
                                          `claim_stale` hands it out again after `claim_idle_ms`
- started more than `max_deliveries` times (`Bus.count_attempt`: claims of consumers that died before starting
  it do not count) -> dead-lettered with the last recorded reason, handler not called
After a dead-letter, `on_dead(delivery, reason)` runs (e.g. to mark the message row dead); its errors are logged.
Handlers must be idempotent: at-least-once means a crash after the work but before the ack repeats it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app import tracing
from app.bus.base import Bus, BusUnavailable, Delivery, PermanentFailure, RetryLater

log = logging.getLogger(__name__)

Handler = Callable[[Delivery], None]
DeadHook = Callable[[Delivery, str], None]


@dataclass
class BatchResult:
    acked: int = 0
    failed: int = 0
    dead: int = 0

    @property
    def handled(self) -> int:
        return self.acked + self.failed + self.dead

    def add(self, other: BatchResult) -> None:
        self.acked += other.acked
        self.failed += other.failed
        self.dead += other.dead


@dataclass
class Consumer:
    bus: Bus
    topic: str
    group: str
    name: str
    handler: Handler
    max_deliveries: int = 5
    claim_idle_ms: int = 30_000
    batch_size: int = 64
    block_ms: int = 1_000
    stop: threading.Event = field(default_factory=threading.Event)
    backoff_cap_s: float = 5.0
    on_dead: DeadHook | None = None
    _last_claim: float = field(default=float("-inf"), init=False, repr=False)

    @property
    def claim_interval_s(self) -> float:
        # Often enough that a stale entry waits at most ~1.5x claim_idle_ms; bounded so a long idle setting
        # still sweeps regularly and a tiny one does not hammer the bus.
        return min(max(self.claim_idle_ms / 2000, 0.1), 5.0)

    def run(self) -> None:
        """Consume until `stop` is set. Bus outages and unexpected errors are logged, then retried with
        backoff."""
        log.info("consumer %s/%s on %s started", self.group, self.name, self.topic)
        self._ensure_group()
        delay = 0.0
        while not self.stop.is_set():
            try:
                self.step(block_ms=self.block_ms)
                delay = 0.0
            except BusUnavailable as exc:
                delay = min(max(delay * 2, 0.1), self.backoff_cap_s)
                log.warning("bus unavailable (%s); retrying in %.1fs", exc, delay)
                self.stop.wait(delay)
            except Exception:
                delay = min(max(delay * 2, 0.1), self.backoff_cap_s)
                log.exception("consumer %s/%s loop error; retrying in %.1fs", self.group, self.name, delay)
                self.stop.wait(delay)
        log.info("consumer %s/%s on %s stopped", self.group, self.name, self.topic)

    def _ensure_group(self) -> None:
        try:
            self.bus.ensure_group(self.topic, self.group)
        except BusUnavailable as exc:  # reads create the group too, once the bus is back
            log.warning("bus unavailable while creating group %s (%s); will retry on read", self.group, exc)

    def step(self, *, block_ms: int) -> BatchResult:
        """One batch: stale entries when a claim is due, else new ones (waiting up to `block_ms`)."""
        batch: list[Delivery] = []
        now = time.monotonic()
        if now - self._last_claim >= self.claim_interval_s:
            self._last_claim = now
            batch = self.bus.claim_stale(
                self.topic, self.group, self.name, min_idle_ms=self.claim_idle_ms, count=self.batch_size
            )
        if not batch:
            batch = self.bus.read(self.topic, self.group, self.name, count=self.batch_size, block_ms=block_ms)
        return self.handle_batch(batch)

    def process_available(self, *, max_batches: int = 10_000) -> BatchResult:
        """Handle everything available right now (stale entries due for a claim, then new ones), without
        blocking; returns when a batch comes back empty. For tests, the CLI and draining on shutdown."""
        total = BatchResult()
        claim_due = True  # a claim sweeps every tenant's stream: once, and again only while it finds entries
        for _ in range(max_batches):
            batch: list[Delivery] = []
            if claim_due:
                self._last_claim = time.monotonic()
                batch = self.bus.claim_stale(
                    self.topic, self.group, self.name, min_idle_ms=self.claim_idle_ms, count=self.batch_size
                )
                claim_due = bool(batch)
            if not batch:
                batch = self.bus.read(self.topic, self.group, self.name, count=self.batch_size, block_ms=0)
            if not batch:
                break
            total.add(self.handle_batch(batch))
        return total

    def handle_batch(self, batch: list[Delivery]) -> BatchResult:
        result = BatchResult()
        done: list[Delivery] = []
        try:
            for delivery in batch:
                if self.stop.is_set():
                    break  # the rest stays pending with us and is reclaimed after claim_idle_ms
                outcome = self._handle_one(delivery)
                if outcome == "ok":
                    done.append(delivery)
                elif outcome == "dead":
                    result.dead += 1
                else:
                    result.failed += 1
        finally:
            # The work is done even if a later entry blew up the loop: ack it, or it would be repeated.
            self._ack(done)
        result.acked = len(done)
        return result

    def _handle_one(self, delivery: Delivery) -> str:
        """Settle one entry, in a span that continues the trace the entry carries (when tracing is on)."""
        if not tracing.enabled():
            return self._settle(delivery, None)
        attributes = tracing.bus_attributes(
            delivery.topic, delivery.tenant_id, **{"messaging.operation.type": "process",
                                                   "messaging.consumer.group.name": self.group,
                                                   "messaging.message.id": delivery.id,
                                                   "switchboard.bus.deliveries": delivery.deliveries})
        with tracing.span(f"process {delivery.topic}", attributes, kind=tracing.SpanKind.CONSUMER,
                          parent=tracing.extract(delivery.fields)) as span:
            outcome = self._settle(delivery, span)
            tracing.annotate(span, {"switchboard.bus.outcome": outcome})
            return outcome

    def _settle(self, delivery: Delivery, span: tracing.Span | None) -> str:
        # A first delivery's attempt is presumed (the contract): no round trip to the bus, which for an answering
        # process of embedded `serve` is another process (app/answerers.py).
        started = 1 if delivery.deliveries <= 1 else self.bus.count_attempt(self.group, delivery)
        if started > self.max_deliveries:
            reason = self.bus.last_failure(self.group, delivery) or (
                f"no success after {started - 1} deliveries and no recorded error "
                "(a consumer probably crashed or hung while handling it)"
            )
            tracing.failed(span, "max_deliveries")
            return self._dead(delivery, reason)
        try:
            self.handler(delivery)
        except PermanentFailure as exc:
            tracing.failed(span, exc, "dead_lettered")
            return self._dead(delivery, exc.reason)
        except RetryLater as exc:
            tracing.failed(span, exc)
            log.warning("%s entry %s (tenant %s, delivery %d of at most %d) will be retried: %s", self.topic,
                        delivery.id, delivery.tenant_id, delivery.deliveries, self.max_deliveries, exc)
            self.bus.record_failure(self.group, delivery, f"{type(exc).__name__}: {exc}")
            return "failed"
        except Exception as exc:
            tracing.failed(span, exc)
            log.exception(
                "handler failed on %s entry %s (tenant %s, delivery %d of at most %d)",
                self.topic, delivery.id, delivery.tenant_id, delivery.deliveries, self.max_deliveries,
            )
            self.bus.record_failure(self.group, delivery, f"{type(exc).__name__}: {exc}")
            return "failed"
        return "ok"

    def _dead(self, delivery: Delivery, reason: str) -> str:
        self.bus.dead_letter(self.group, delivery, reason)
        if self.on_dead is not None:
            try:
                self.on_dead(delivery, reason)
            except Exception:  # the dead letter is written; a failing hook must not redeliver the entry
                log.exception("on_dead hook failed for %s entry %s", self.topic, delivery.id)
        return "dead"

    def _ack(self, done: list[Delivery]) -> None:
        delay = 0.1
        while done:
            try:
                self.bus.ack(self.group, done)
                return
            except BusUnavailable as exc:
                if self.stop.is_set():
                    log.warning("giving up acking %d entries on shutdown (%s); they will be redelivered",
                                len(done), exc)
                    raise
                log.warning("ack failed (%s); retrying in %.1fs", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff_cap_s)

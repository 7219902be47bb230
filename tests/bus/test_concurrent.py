"""The concurrent consumer on both buses: handlers really run side by side, one key (conversation) at a time and
in order, tenants take turns and one tenant's stalled handlers leave room for the others, reading stops at the
in-flight bound, and settling is the one-at-a-time consumer's (acks after success, dead letters, reclaims)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from app.bus.base import Bus, Delivery, PermanentFailure
from app.bus.concurrent import ConcurrentConsumer
from tests.bus.conftest import BusFactory, wait_for

T, G = "inbound", "orchestrator"


class CountingBus:
    """Delegates to a real bus and tracks how many entries this consumer holds: read or claimed, not yet acked,
    dead-lettered or failed. `max_held` and `max_held_by_tenant` are the peaks over the whole test."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.lock = threading.Lock()
        self.held: set[tuple[str, str]] = set()
        self.max_held = 0
        self.max_held_by_tenant: Counter[str] = Counter()
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bus, name)

    def _took(self, deliveries: list[Delivery]) -> list[Delivery]:
        with self.lock:
            self.held.update((d.tenant_id, d.id) for d in deliveries)
            self.max_held = max(self.max_held, len(self.held))
            for tenant, n in Counter(t for t, _ in self.held).items():
                self.max_held_by_tenant[tenant] = max(self.max_held_by_tenant[tenant], n)
        return deliveries

    def _settled(self, deliveries: Sequence[Delivery]) -> None:
        with self.lock:
            self.held.difference_update((d.tenant_id, d.id) for d in deliveries)

    def read(self, *args: Any, **kwargs: Any) -> list[Delivery]:
        with self.lock:
            self.reads += 1
        return self._took(self.bus.read(*args, **kwargs))

    def claim_stale(self, *args: Any, **kwargs: Any) -> list[Delivery]:
        return self._took(self.bus.claim_stale(*args, **kwargs))

    def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        self.bus.ack(group, deliveries)
        self._settled(deliveries)

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        self.bus.dead_letter(group, delivery, reason)
        self._settled([delivery])

    def record_failure(self, group: str, delivery: Delivery, reason: str) -> None:
        self.bus.record_failure(group, delivery, reason)
        self._settled([delivery])


def conversation(d: Delivery) -> str:
    return d.fields["conv"]


def blocked_on(gate: threading.Event) -> Callable[[Delivery], None]:
    """A handler that blocks until `gate` is set (a stalled LLM)."""

    def handler(d: Delivery) -> None:
        assert gate.wait(30), "the test never released the gate"

    return handler


@pytest.fixture
def running() -> Iterator[Callable[[ConcurrentConsumer], None]]:
    """Starts consumers' `run` in threads; stops and joins them after the test."""
    started: list[tuple[ConcurrentConsumer, threading.Thread]] = []

    def start(consumer: ConcurrentConsumer) -> None:
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        started.append((consumer, thread))

    yield start
    for consumer, thread in started:
        consumer.stop.set()
    for _, thread in started:
        thread.join(timeout=15)
        assert not thread.is_alive()


def test_handlers_run_side_by_side(bus: Bus) -> None:
    # Eight handlers must all be inside at once to pass the barrier; one at a time, the first would time out.
    barrier = threading.Barrier(8, timeout=20)
    for i in range(8):
        bus.publish(T, f"t{i % 3}", {"conv": f"c{i}"})
    def handler(d: Delivery) -> None:
        barrier.wait()

    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=8, key=conversation)
    result = consumer.process_available()
    assert (result.acked, result.failed, result.dead) == (8, 0, 0)
    assert bus.pending_count(T, G) == 0


def test_one_conversation_is_handled_one_message_at_a_time_in_order(
    bus: Bus, running: Callable[[ConcurrentConsumer], None]
) -> None:
    published: dict[str, list[str]] = {}
    for i in range(60):
        conv = ["chatty", "chatty", "other", "third"][i % 4]
        tenant = "acme" if conv != "third" else "globex"
        published.setdefault(conv, []).append(bus.publish(T, tenant, {"conv": conv}))
    inside: Counter[str] = Counter()
    overlaps: list[str] = []
    order: dict[str, list[str]] = {}
    lock = threading.Lock()
    slow = threading.Event()  # never set: wait() makes each handler slow without asserting any time

    def handler(d: Delivery) -> None:
        conv = d.fields["conv"]
        with lock:
            inside[conv] += 1
            if inside[conv] > 1:
                overlaps.append(conv)
            order.setdefault(conv, []).append(d.id)
        slow.wait(0.005)
        with lock:
            inside[conv] -= 1

    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=16, key=conversation, block_ms=100)
    running(consumer)
    wait_for(lambda: consumer.totals.acked == 60 and bus.pending_count(T, G) == 0)
    assert overlaps == []
    assert order == published


def test_ordering_holds_for_messages_read_in_later_batches(
    bus: Bus, running: Callable[[ConcurrentConsumer], None]
) -> None:
    # The first message of the conversation blocks; its followers arrive (and are read) while it runs.
    gate = threading.Event()
    order: list[str] = []

    def handler(d: Delivery) -> None:
        if d.fields["n"] == "0":
            gate.wait(20)
        order.append(d.fields["n"])

    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=8, key=conversation, block_ms=100)
    running(consumer)
    bus.publish(T, "acme", {"conv": "c", "n": "0"})
    wait_for(lambda: consumer.running == 1)
    for n in range(1, 6):
        bus.publish(T, "acme", {"conv": "c", "n": str(n)})
    wait_for(lambda: consumer.held == 6)  # all read, five queued behind the first
    assert order == []
    gate.set()
    wait_for(lambda: consumer.totals.acked == 6)
    assert order == ["0", "1", "2", "3", "4", "5"]


def test_reading_stops_at_the_in_flight_bound_while_handlers_stall(
    make_bus: BusFactory, running: Callable[[ConcurrentConsumer], None]
) -> None:
    bus = CountingBus(make_bus())
    gate = threading.Event()
    for i in range(40):
        bus.publish(T, "acme", {"conv": f"c{i}"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", blocked_on(gate), concurrency=4, key=conversation,
                                  block_ms=100)
    running(consumer)
    wait_for(lambda: consumer.running == 4)
    assert consumer.held == 4 and len(bus.held) == 4
    assert bus.pending_count(T, G) == 4  # the other 36 were never read
    gate.set()
    wait_for(lambda: consumer.totals.acked == 40)
    assert bus.max_held <= 4


def test_a_stalled_tenant_does_not_hold_up_the_others(
    make_bus: BusFactory, running: Callable[[ConcurrentConsumer], None]
) -> None:
    bus = CountingBus(make_bus())
    stalled = threading.Event()
    done: list[str] = []

    def handler(d: Delivery) -> None:
        if d.tenant_id == "noisy":
            stalled.wait(30)  # its LLM hangs
        done.append(d.tenant_id)

    for i in range(50):  # the noisy tenant's backlog is there first and is bigger than the whole pool
        bus.publish(T, "noisy", {"conv": f"n{i}"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=6, tenant_concurrency=4,
                                  key=conversation, block_ms=100)
    running(consumer)
    wait_for(lambda: consumer.running == 4)
    for i in range(20):
        bus.publish(T, "quiet", {"conv": f"q{i}"})
    wait_for(lambda: done.count("quiet") == 20)  # answered while every noisy handler is still blocked
    assert "noisy" not in done
    assert bus.max_held_by_tenant["noisy"] <= 4
    assert bus.max_held <= 6
    stalled.set()
    wait_for(lambda: consumer.totals.acked == 70)


def test_by_default_a_lone_tenant_runs_its_whole_share_and_the_rest_is_there_at_once_for_the_others(
    make_bus: BusFactory, running: Callable[[ConcurrentConsumer], None]
) -> None:
    """The orchestrator's default split (app/workers_runtime.py): one tenant may hold all but a fifth of the
    workers, so its burst as big as that share runs in one go (one LLM round), and another tenant's messages
    still start while every one of the busy tenant's handlers is blocked."""
    from app.workers_runtime import default_tenant_concurrency

    assert default_tenant_concurrency(80) == 64
    bus = CountingBus(make_bus())
    share = default_tenant_concurrency(10)
    stalled = threading.Event()
    done: list[str] = []

    def handler(d: Delivery) -> None:
        if d.tenant_id == "busy":
            stalled.wait(30)
        done.append(d.tenant_id)

    for i in range(share):
        bus.publish(T, "busy", {"conv": f"b{i}"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=10, tenant_concurrency=share,
                                  key=conversation, block_ms=100)
    running(consumer)
    wait_for(lambda: consumer.running == share)  # the whole burst at once, not share minus a reserve
    for i in range(5):
        bus.publish(T, "other", {"conv": f"o{i}"})
    wait_for(lambda: done.count("other") == 5)
    assert "busy" not in done and consumer.running == share
    stalled.set()
    wait_for(lambda: consumer.totals.acked == share + 5)
    assert bus.max_held_by_tenant["busy"] == share


def test_failures_settle_as_with_the_sequential_consumer(bus: Bus) -> None:
    attempts: Counter[str] = Counter()

    def handler(d: Delivery) -> None:
        kind = d.fields["kind"]
        attempts[kind] += 1
        if kind == "poison":
            raise PermanentFailure("cannot be read")
        if kind == "flaky" and attempts[kind] == 1:
            raise ConnectionError("database restarting")
        if kind == "broken":
            raise ValueError(f"always fails ({attempts[kind]})")

    for kind in ("ok", "poison", "flaky", "broken"):
        bus.publish(T, "acme", {"conv": kind, "kind": kind})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=4, key=conversation,
                                  max_deliveries=2, claim_idle_ms=50)
    first = consumer.process_available()
    assert (first.acked, first.dead, first.failed) == (1, 1, 2)
    assert bus.pending_count(T, G) == 2  # flaky and broken stay pending for a reclaim
    wait_for(lambda: consumer.process_available() and not bus.pending_count(T, G))
    assert attempts == {"ok": 1, "poison": 1, "flaky": 2, "broken": 2}
    reasons = {letter.fields["kind"]: letter.reason for letter in bus.dead_letters(T, "acme")}
    assert reasons == {"poison": "cannot be read", "broken": "ValueError: always fails (2)"}


def test_stop_lets_running_handlers_finish_and_leaves_queued_entries_pending(
    bus: Bus, running: Callable[[ConcurrentConsumer], None]
) -> None:
    gate = threading.Event()
    for i in range(6):
        bus.publish(T, "acme", {"conv": "one"})  # one conversation: one runs, five wait behind it
    consumer = ConcurrentConsumer(bus, T, G, "c1", blocked_on(gate), concurrency=8, key=conversation,
                                  block_ms=100)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    wait_for(lambda: consumer.running == 1 and consumer.held == 6)
    consumer.stop.set()
    gate.set()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert consumer.totals.acked == 1
    assert bus.pending_count(T, G) == 5
    rest = ConcurrentConsumer(bus, T, G, "c2", lambda d: None, concurrency=8, key=conversation, claim_idle_ms=0)
    assert rest.process_available().acked == 5


def test_entries_held_here_are_kept_from_other_consumers(
    bus: Bus, running: Callable[[ConcurrentConsumer], None]
) -> None:
    gate = threading.Event()
    for _ in range(3):
        bus.publish(T, "acme", {"conv": "one"})
    holder = ConcurrentConsumer(bus, T, G, "holder", blocked_on(gate), concurrency=3, key=conversation,
                                block_ms=50, claim_idle_ms=100)
    running(holder)
    wait_for(lambda: holder.held == 3)
    # Another replica sweeps for stale entries for a while: the holder keeps renewing its claim.
    swept: list[Delivery] = []
    sweeps = 0
    while sweeps < 20:
        swept += bus.claim_stale(T, G, "other", min_idle_ms=1000, count=10)
        sweeps += 1
        time.sleep(0.1)
    assert swept == []
    gate.set()
    wait_for(lambda: holder.totals.acked == 3)
    assert bus.pending_count(T, G) == 0


def test_draining_more_entries_than_workers_settles_them_all(bus: Bus) -> None:
    inside: list[int] = [0]
    peak: list[int] = [0]
    lock = threading.Lock()

    def handler(d: Delivery) -> None:
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.002)
        with lock:
            inside[0] -= 1

    for i in range(30):
        bus.publish(T, f"t{i % 2}", {"conv": f"c{i}"})
    result = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=4, key=conversation).process_available()
    assert (result.acked, result.failed, result.dead) == (30, 0, 0)
    assert 1 <= peak[0] <= 4
    assert bus.pending_count(T, G) == 0


def test_an_entry_whose_key_cannot_be_read_is_still_handled(bus: Bus) -> None:
    bus.publish(T, "acme", {"no-conv": "x"})  # conversation() raises KeyError on it
    bus.publish(T, "acme", {"conv": "c"})

    def handler(d: Delivery) -> None:
        if "conv" not in d.fields:
            raise PermanentFailure("unreadable entry")

    result = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=2, key=conversation).process_available()
    assert (result.acked, result.dead) == (1, 1)
    assert [letter.reason for letter in bus.dead_letters(T, "acme")] == ["unreadable entry"]


def test_the_after_stop_hook_runs_once_the_running_handlers_have_finished_and_its_error_is_logged(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    gate, order = threading.Event(), []

    def handler(d: Delivery) -> None:
        assert gate.wait(30)
        order.append("handler finished")

    def after_stop() -> None:
        order.append("after stop")
        raise RuntimeError("flush failed")

    bus.publish(T, "acme", {"conv": "one"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=2, key=conversation, block_ms=100,
                                  after_stop=after_stop)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    wait_for(lambda: consumer.running == 1)
    consumer.stop.set()
    gate.set()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert order == ["handler finished", "after stop"]
    assert "after-stop hook failed" in caplog.text


def test_the_orchestrators_consumer_deletes_its_published_outbox_entries_when_it_stops(services) -> None:
    """Its outbox publisher deletes published entries with the tenant's next outcome, or soon after; on a stop
    it deletes them at once, so no relay publishes them a second time after a restart."""
    from app.workers_runtime import build_consumers

    inbound = build_consumers(services, services.bus, threading.Event())[0]
    assert isinstance(inbound, ConcurrentConsumer)
    orchestrator = inbound.handler.__self__  # type: ignore[attr-defined]
    assert inbound.after_stop == orchestrator.publisher.flush


# ---------------------------------------------------------------------- a failed entry keeps its place in line

def test_a_failed_entry_is_retried_before_its_conversations_next_one(
    bus: Bus, running: Callable[[ConcurrentConsumer], None]
) -> None:
    """A database hiccup on message A: its conversation's message B waits for A's retry instead of being
    answered first. The claim time is long, so nothing is reclaimed here: A's only way back is the retry."""
    order: list[str] = []

    def handler(d: Delivery) -> None:
        order.append(d.fields["n"])
        if d.fields["n"] == "A" and order.count("A") == 1:
            raise ConnectionError("database restarting")

    bus.publish(T, "acme", {"conv": "k", "n": "A"})
    bus.publish(T, "acme", {"conv": "k", "n": "B"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=4, key=conversation, block_ms=50,
                                  claim_idle_ms=600_000, retry_in_place=True, retry_delay_ms=0)
    running(consumer)
    wait_for(lambda: "B" in order)
    assert order == ["A", "A", "B"]
    wait_for(lambda: consumer.totals.acked == 2)
    assert consumer.totals.failed == 1 and bus.pending_count(T, G) == 0


def test_an_entry_that_keeps_failing_is_dead_lettered_then_its_conversation_goes_on(
    bus: Bus, running: Callable[[ConcurrentConsumer], None]
) -> None:
    order: list[str] = []

    def handler(d: Delivery) -> None:
        order.append(d.fields["n"])
        if d.fields["n"] == "A":
            raise ConnectionError(f"database down ({order.count('A')})")

    bus.publish(T, "acme", {"conv": "k", "n": "A"})
    bus.publish(T, "acme", {"conv": "k", "n": "B"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=4, key=conversation, block_ms=50,
                                  claim_idle_ms=600_000, retry_in_place=True, retry_delay_ms=0, max_deliveries=3)
    running(consumer)
    wait_for(lambda: consumer.totals.acked == 1)
    assert order == ["A", "A", "A", "B"]  # each retry counted as a delivery: no endless hold on the conversation
    [letter] = bus.dead_letters(T, "acme")
    assert letter.fields["n"] == "A" and letter.reason == "ConnectionError: database down (3)"
    assert consumer.held == 0 and bus.pending_count(T, G) == 0


def test_a_failure_of_the_last_allowed_delivery_is_dead_lettered_at_once(
    bus: Bus, running: Callable[[ConcurrentConsumer], None]
) -> None:
    """No retry delay for an entry that has no delivery left: its conversation goes on at once."""
    order: list[str] = []

    def handler(d: Delivery) -> None:
        order.append(d.fields["n"])
        if d.fields["n"] == "A":
            raise ConnectionError("database down")

    bus.publish(T, "acme", {"conv": "k", "n": "A"})
    bus.publish(T, "acme", {"conv": "k", "n": "B"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=4, key=conversation, block_ms=50,
                                  claim_idle_ms=600_000, retry_in_place=True, retry_delay_ms=600_000,
                                  max_deliveries=1)
    running(consumer)
    wait_for(lambda: consumer.totals.acked == 1)
    assert order == ["A", "B"] and [d.fields["n"] for d in bus.dead_letters(T, "acme")] == ["A"]


def test_failed_entries_waiting_for_their_retry_never_crowd_out_the_rest(
    bus: Bus, running: Callable[[ConcurrentConsumer], None]
) -> None:
    """At most a quarter of the places wait for a retry (one of four here): the next failure is left for a reclaim
    as before, and its conversation goes on, rather than failing conversations holding every place."""
    order: list[str] = []

    def handler(d: Delivery) -> None:
        order.append(d.fields["n"])
        if d.fields["n"].startswith("A"):
            raise ConnectionError("provider down")

    bus.publish(T, "acme", {"conv": "k1", "n": "A1"})
    bus.publish(T, "acme", {"conv": "k1", "n": "B1"})
    bus.publish(T, "acme", {"conv": "k2", "n": "A2"})
    bus.publish(T, "acme", {"conv": "k2", "n": "B2"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=4, key=conversation, block_ms=50,
                                  claim_idle_ms=600_000, retry_in_place=True, retry_delay_ms=600_000)
    running(consumer)
    wait_for(lambda: consumer.totals.acked == 1)
    assert sorted(order)[:2] == ["A1", "A2"] and len(order) == 3 and order[2] in ("B1", "B2")
    assert consumer.held == 2  # the one failure waiting for its retry, and its conversation's next message


def test_without_retry_in_place_a_failed_entry_is_left_for_a_reclaim(bus: Bus) -> None:
    order: list[str] = []

    def handler(d: Delivery) -> None:
        order.append(d.fields["n"])
        if d.fields["n"] == "A" and order.count("A") == 1:
            raise ConnectionError("receiver down")

    bus.publish(T, "acme", {"conv": "k", "n": "A"})
    bus.publish(T, "acme", {"conv": "k", "n": "B"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=4, key=conversation, claim_idle_ms=0)
    first = consumer.process_available()
    assert (first.acked, first.failed) == (1, 1) and order == ["A", "B"] and consumer.held == 0


def test_a_drain_leaves_a_failed_entry_and_its_conversations_next_ones_pending_in_order(bus: Bus) -> None:
    order: list[str] = []

    def handler(d: Delivery) -> None:
        order.append(d.fields["n"])
        if d.fields["n"] == "A" and order.count("A") == 1:
            raise ConnectionError("database restarting")

    for n in ("A", "B", "C"):
        bus.publish(T, "acme", {"conv": "k", "n": n})
    bus.publish(T, "acme", {"conv": "other", "n": "X"})
    consumer = ConcurrentConsumer(bus, T, G, "c1", handler, concurrency=8, key=conversation, claim_idle_ms=0,
                                  retry_in_place=True)
    first = consumer.process_available()
    assert (first.acked, first.failed) == (1, 1) and sorted(order) == ["A", "X"]
    assert bus.pending_count(T, G) == 3 and consumer.held == 0
    assert consumer.process_available().acked == 3  # reclaimed, in order
    assert [n for n in order if n != "X"] == ["A", "A", "B", "C"]

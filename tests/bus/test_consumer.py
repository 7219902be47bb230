"""Consumer runner behaviour beyond the bus contract: outages, crashes without a recorded reason."""

from __future__ import annotations

import logging
import threading

import pytest

from app.bus.base import BusUnavailable, Delivery, PermanentFailure
from app.bus.consumer import Consumer
from app.bus.memory import MemoryBus
from app.bus.redis_streams import RedisStreamsBus
from app.channels import Transient
from tests.bus.conftest import wait_for

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def test_publish_to_an_unreachable_redis_raises_a_typed_error() -> None:
    bus = RedisStreamsBus(UNREACHABLE)
    with pytest.raises(BusUnavailable, match="REDIS_URL"):
        bus.publish("inbound", "acme", {"a": "1"})
    bus.close()


def test_consumer_backs_off_and_keeps_running_while_the_bus_is_down(caplog: pytest.LogCaptureFixture) -> None:
    bus = RedisStreamsBus(UNREACHABLE)
    stop = threading.Event()
    consumer = Consumer(bus, "inbound", "g", "c1", lambda d: None, stop=stop, backoff_cap_s=0.2)
    thread = threading.Thread(target=consumer.run, daemon=True)
    with caplog.at_level(logging.WARNING, logger="app.bus.consumer"):
        thread.start()
        wait_for(lambda: sum("retrying in" in r.getMessage() for r in caplog.records) >= 3)
        assert thread.is_alive()
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    bus.close()


def test_entry_whose_consumer_kept_crashing_is_dead_lettered_with_an_explanation() -> None:
    bus = MemoryBus()
    bus.publish("inbound", "acme", {"a": "1"})
    # Three consumers take it, start handling it (the runner counts the attempt before its handler runs) and die
    # without recording anything (as a SIGKILL would). Claims that never started do not count: see
    # tests/bus/test_contract.py.
    [taken] = bus.read("inbound", "g", "dead1", count=1, block_ms=0)
    bus.count_attempt("g", taken)
    for name in ("dead2", "dead3"):
        [taken] = bus.claim_stale("inbound", "g", name, min_idle_ms=0, count=1)
        bus.count_attempt("g", taken)
    handled: list[Delivery] = []
    consumer = Consumer(bus, "inbound", "g", "c", handled.append, max_deliveries=3, claim_idle_ms=0)
    result = consumer.process_available()
    assert result.dead == 1 and handled == []
    [letter] = bus.dead_letters("inbound", "acme")
    assert letter.deliveries == 4
    assert "no success after 3 deliveries" in letter.reason and "crashed" in letter.reason


def test_stop_between_entries_leaves_the_rest_pending_for_reclaim() -> None:
    bus = MemoryBus()
    for i in range(5):
        bus.publish("inbound", "acme", {"i": str(i)})
    stop = threading.Event()
    seen: list[str] = []

    def handler(d: Delivery) -> None:
        seen.append(d.fields["i"])
        if len(seen) == 2:
            stop.set()

    result = Consumer(bus, "inbound", "g", "c", handler, stop=stop).step(block_ms=0)
    assert result.acked == 2 and seen == ["0", "1"]
    assert bus.pending_count("inbound", "g") == 3
    rest = Consumer(bus, "inbound", "g", "c2", lambda d: seen.append(d.fields["i"]), claim_idle_ms=0)
    assert rest.process_available().acked == 3
    assert sorted(seen) == ["0", "1", "2", "3", "4"] and bus.pending_count("inbound", "g") == 0


def test_on_dead_hook_gets_the_delivery_and_reason_and_its_errors_do_not_redeliver() -> None:
    bus = MemoryBus()
    bus.publish("inbound", "acme", {"a": "1"})
    bus.publish("inbound", "acme", {"a": "2"})
    hooked: list[tuple[str, str]] = []

    def on_dead(d: Delivery, reason: str) -> None:
        hooked.append((d.fields["a"], reason))
        if d.fields["a"] == "2":
            raise RuntimeError("database down while marking the row")

    def handler(d: Delivery) -> None:
        raise PermanentFailure(f"bad {d.fields['a']}")

    result = Consumer(bus, "inbound", "g", "c", handler, on_dead=on_dead).process_available()
    assert result.dead == 2
    assert hooked == [("1", "bad 1"), ("2", "bad 2")]
    assert [letter.reason for letter in bus.dead_letters("inbound", "acme")] == ["bad 1", "bad 2"]
    assert bus.pending_count("inbound", "g") == 0


def test_an_expected_retry_is_a_warning_without_a_traceback_and_the_entry_comes_again(
        caplog: pytest.LogCaptureFixture) -> None:
    # A provider's 5xx or a USSD screen that may still show the reply: the dispatcher raises a `Transient`
    # (a `RetryLater`); the entry is redelivered, and the log says so in one line instead of an ERROR trace.
    bus = MemoryBus()
    bus.publish("outbound", "acme", {"a": "1"})
    attempts: list[Delivery] = []

    def handler(d: Delivery) -> None:
        attempts.append(d)
        if len(attempts) == 1:
            raise Transient("Telegram unreachable: connection refused")

    consumer = Consumer(bus, "outbound", "g", "c", handler, claim_idle_ms=0)
    with caplog.at_level(logging.WARNING, logger="app.bus.consumer"):
        assert consumer.process_available().failed == 1
    [record] = [r for r in caplog.records if r.name == "app.bus.consumer"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "(tenant acme, delivery 1 of at most" in record.getMessage()  # how close it is to a dead letter
    assert "will be retried: Telegram unreachable" in record.getMessage()
    assert bus.last_failure("g", attempts[0]) == "Transient: Telegram unreachable: connection refused"
    assert consumer.process_available().acked == 1
    assert [d.id for d in attempts] == [attempts[0].id] * 2

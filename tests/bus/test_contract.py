"""One contract for both buses (MemoryBus and RedisStreamsBus on the real Redis): every test runs on each."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import redis

from app.bus.base import TRIMMED_REASON, Bus, Delivery, PermanentFailure
from app.bus.consumer import Consumer
from tests.bus.conftest import BusFactory, wait_for
from tests.conftest import REDIS_TEST_URL

T = "inbound"
G = "orchestrator"


def drain(bus: Bus, consumer: str = "c1", count: int = 100) -> list[Delivery]:
    out: list[Delivery] = []
    while batch := bus.read(T, G, consumer, count=count, block_ms=0):
        out.extend(batch)
    return out


def test_publish_read_ack(bus: Bus) -> None:
    ids = [bus.publish(T, "acme", {"n": str(i)}) for i in range(3)]
    got = bus.read(T, G, "c1", count=10, block_ms=1000)
    assert [d.id for d in got] == ids
    assert [d.fields for d in got] == [{"n": "0"}, {"n": "1"}, {"n": "2"}]
    assert {(d.topic, d.tenant_id, d.deliveries) for d in got} == {(T, "acme", 1)}
    assert bus.pending_count(T, G) == 3
    bus.ack(G, got)
    assert bus.pending_count(T, G) == 0
    assert bus.read(T, G, "c1", count=10, block_ms=0) == []


def test_group_created_late_still_gets_earlier_entries(bus: Bus) -> None:
    bus.publish(T, "acme", {"early": "1"})
    bus.ensure_group(T, "late-group")
    got = bus.read(T, "late-group", "c1", count=10, block_ms=1000)
    assert [d.fields for d in got] == [{"early": "1"}]


def test_each_tenant_has_its_own_stream(make_bus: BusFactory) -> None:
    bus = make_bus()
    for i in range(5):
        bus.publish(T, "acme", {"owner": "acme", "i": str(i)})
        bus.publish(T, "globex", {"owner": "globex", "i": str(i)})
    assert bus.stream_length(T, "acme") == 5 and bus.stream_length(T, "globex") == 5
    got = drain(bus)
    assert len(got) == 10
    assert all(d.fields["owner"] == d.tenant_id for d in got)
    if make_bus.kind == "redis":  # type: ignore[attr-defined]
        ns = make_bus.namespace  # type: ignore[attr-defined]
        r = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True)
        streams = {k for k in r.scan_iter(f"{ns}:*") if r.type(k) == "stream"}
        assert streams == {f"{ns}:{T}:acme", f"{ns}:{T}:globex"}
        for tenant in ("acme", "globex"):
            owners = {fields["owner"] for _, fields in r.xrange(f"{ns}:{T}:{tenant}")}
            assert owners == {tenant}
        assert {d.stream for d in got} == streams
        r.close()


@pytest.mark.parametrize("tenant", ["acme:dead", "acme:x", "", "../etc", "a b"])
def test_tenant_ids_that_could_spell_another_key_are_rejected(bus: Bus, tenant: str) -> None:
    with pytest.raises(ValueError, match="invalid tenant id"):
        bus.publish(T, tenant, {"a": "1"})


def test_fields_must_be_strings(bus: Bus) -> None:
    with pytest.raises(TypeError, match="must be str"):
        bus.publish(T, "acme", {"n": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one field"):
        bus.publish(T, "acme", {})


def test_publish_many_appends_in_order_across_tenants(make_bus: BusFactory) -> None:
    reader = make_bus()
    publisher = make_bus(peer_of=reader)
    reader.ensure_group(T, G)  # before the streams exist: the batch must register its tenants for readers
    entries = [("acme", {"n": "0"}), ("globex", {"n": "1"}), ("acme", {"n": "2"})]
    ids = publisher.publish_many(T, entries)
    assert len(ids) == 3 and ids[0] != ids[2]
    got = wait_for(lambda: drain(reader))
    assert sorted((d.tenant_id, d.fields["n"], d.id) for d in got) == sorted(
        (tenant, fields["n"], entry_id) for (tenant, fields), entry_id in zip(entries, ids, strict=True))
    assert [d.fields["n"] for d in got if d.tenant_id == "acme"] == ["0", "2"]  # order within a stream
    assert publisher.publish_many(T, []) == []


def test_publish_many_checks_everything_before_appending_anything(bus: Bus) -> None:
    with pytest.raises(ValueError, match="invalid tenant id"):
        bus.publish_many(T, [("acme", {"n": "0"}), ("acme:dead", {"n": "1"})])
    with pytest.raises(TypeError, match="must be str"):
        bus.publish_many(T, [("acme", {"n": "0"}), ("acme", {"n": 1})])  # type: ignore[list-item]
    assert bus.stream_length(T, "acme") == 0


def test_batched_read_is_bounded_and_fair_across_many_tenants(bus: Bus) -> None:
    tenants = [f"t{i:02d}" for i in range(50)]
    for i in range(3):
        for t in tenants:
            bus.publish(T, t, {"t": t, "i": str(i)})
    first = bus.read(T, G, "c1", count=20, block_ms=1000)
    assert len(first) == 20
    assert len({d.tenant_id for d in first}) == 20  # one each from 20 tenants, not 20 from one
    rest = drain(bus, count=20)
    everything = first + rest
    assert len(everything) == 150 and len({(d.tenant_id, d.id) for d in everything}) == 150
    assert Counter(d.tenant_id for d in everything) == dict.fromkeys(tenants, 3)
    assert all(d.fields["t"] == d.tenant_id for d in everything)


def test_batched_read_with_few_tenants_takes_from_each(bus: Bus) -> None:
    for t in ("a1", "b2", "c3", "d4"):
        for i in range(10):
            bus.publish(T, t, {"i": str(i)})
    batch = bus.read(T, G, "c1", count=20, block_ms=1000)
    assert len(batch) == 20
    assert Counter(d.tenant_id for d in batch) == {"a1": 5, "b2": 5, "c3": 5, "d4": 5}


@pytest.mark.parametrize("tenants", [4, 60])
def test_one_busy_tenant_among_quiet_ones_fills_whole_batches(bus: Bus, tenants: int) -> None:
    for i in range(tenants):
        bus.publish(T, f"quiet{i:02d}", {"i": "0"})
    assert len(drain(bus)) == tenants
    for i in range(50):
        bus.publish(T, "busy", {"i": str(i)})
    batch = bus.read(T, G, "c1", count=20, block_ms=1000)
    assert [d.fields["i"] for d in batch] == [str(i) for i in range(20)]
    assert {d.tenant_id for d in batch} == {"busy"}


def test_new_tenant_stream_is_discovered_by_a_running_reader(make_bus: BusFactory) -> None:
    reader = make_bus()
    publisher = make_bus(peer_of=reader)
    publisher.publish(T, "acme", {"n": "1"})
    assert len(reader.read(T, G, "c1", count=10, block_ms=1000)) == 1
    publisher.publish(T, "newco", {"n": "2"})
    got = wait_for(lambda: reader.read(T, G, "c1", count=10, block_ms=100))
    assert [(d.tenant_id, d.fields) for d in got] == [("newco", {"n": "2"})]


def test_unacked_entry_is_redelivered_by_claim_with_count_two(bus: Bus) -> None:
    entry_id = bus.publish(T, "acme", {"x": "1"})
    assert [d.id for d in bus.read(T, G, "dies", count=10, block_ms=1000)] == [entry_id]
    assert bus.claim_stale(T, G, "c2", min_idle_ms=60_000, count=10) == []  # not idle long enough
    claimed = wait_for(lambda: bus.claim_stale(T, G, "c2", min_idle_ms=100, count=10))
    assert [(d.id, d.fields, d.deliveries, d.tenant_id) for d in claimed] == [
        (entry_id, {"x": "1"}, 2, "acme")
    ]
    assert bus.read(T, G, "c2", count=10, block_ms=0) == []  # a claim is not a new entry
    bus.ack(G, claimed)
    assert bus.pending_count(T, G) == 0


def test_an_entry_only_waiting_in_consumers_that_died_is_not_dead_lettered(bus: Bus) -> None:
    """Found by the chaos run (docs/reliability.md): an orchestrator restarted again and again reclaims every
    pending entry each time, and dies before it starts most of them (they wait behind their conversation's
    earlier message). Only attempts that started count toward max_deliveries: these entries never crashed
    anything, so they are handled, not dead-lettered."""
    bus.publish(T, "acme", {"body": "patient"})
    assert bus.read(T, G, "dead0", count=1, block_ms=0)
    for n in range(1, 6):  # five more consumers claim it and are killed before starting it
        [claimed] = bus.claim_stale(T, G, f"dead{n}", min_idle_ms=0, count=1)
    assert claimed.deliveries == 6
    handled: list[Delivery] = []
    consumer = Consumer(bus, T, G, "c1", handled.append, max_deliveries=2, claim_idle_ms=0)
    wait_for(lambda: consumer.process_available().handled)
    assert [d.fields for d in handled] == [{"body": "patient"}]
    assert bus.dead_letters(T, "acme") == []
    assert bus.pending_count(T, G) == 0


def test_an_entry_whose_handler_started_and_never_finished_max_deliveries_times_is_dead_lettered(bus: Bus) -> None:
    """The poison message that kills its consumer each time it is handled still ends in the dead letters."""
    bus.publish(T, "acme", {"body": "kills its consumer"})
    [first] = bus.read(T, G, "dead0", count=1, block_ms=0)
    assert bus.count_attempt(G, first) == 1  # a first delivery: counted, without a call, as started
    for n in range(1, 3):  # each started it (as the consumer runner records) and was killed
        [claimed] = bus.claim_stale(T, G, f"dead{n}", min_idle_ms=0, count=1)
        assert bus.count_attempt(G, claimed) == n + 1
    handled: list[Delivery] = []
    consumer = Consumer(bus, T, G, "c1", handled.append, max_deliveries=3, claim_idle_ms=0)
    wait_for(lambda: consumer.process_available().dead)
    [letter] = bus.dead_letters(T, "acme")
    assert handled == []
    assert "no success after 3 deliveries" in letter.reason and "crashed" in letter.reason


def test_max_deliveries_dead_letters_with_the_handlers_reason(bus: Bus) -> None:
    calls: list[int] = []

    def handler(d: Delivery) -> None:
        calls.append(d.deliveries)
        raise ValueError(f"boom on delivery {d.deliveries}")

    entry_id = bus.publish(T, "acme", {"body": "poison"})
    consumer = Consumer(bus, T, G, "c1", handler, max_deliveries=2, claim_idle_ms=50)
    wait_for(lambda: consumer.process_available().dead or bus.dead_letters(T, "acme"))
    [letter] = bus.dead_letters(T, "acme")
    assert calls == [1, 2]
    assert (letter.original_id, letter.fields, letter.deliveries) == (entry_id, {"body": "poison"}, 3)
    assert letter.reason == "ValueError: boom on delivery 2"
    assert letter.extra["group"] == G
    assert bus.pending_count(T, G) == 0
    assert bus.dead_letters(T, "globex") == []


def test_permanent_failure_dead_letters_at_once(bus: Bus) -> None:
    calls: list[Delivery] = []

    def handler(d: Delivery) -> None:
        calls.append(d)
        raise PermanentFailure("event v9 is newer than this consumer understands")

    bus.publish(T, "acme", {"v": "9"})
    result = Consumer(bus, T, G, "c1", handler).process_available()
    assert (result.dead, result.acked, result.failed, len(calls)) == (1, 0, 0, 1)
    [letter] = bus.dead_letters(T, "acme")
    assert letter.reason == "event v9 is newer than this consumer understands"
    assert (letter.deliveries, letter.fields) == (1, {"v": "9"})
    assert bus.pending_count(T, G) == 0


def test_ack_only_after_handler_success(bus: Bus) -> None:
    outcomes = iter([RuntimeError("database is down"), None])
    handled: list[tuple[str, int]] = []

    def handler(d: Delivery) -> None:
        error = next(outcomes)
        if error:
            raise error
        handled.append((d.id, d.deliveries))

    entry_id = bus.publish(T, "acme", {"n": "1"})
    bus.publish(T, "acme", {"n": "2"})  # succeeds on its first delivery, in the same batch
    consumer = Consumer(bus, T, G, "c1", handler, claim_idle_ms=50, max_deliveries=3)
    first = consumer.process_available()
    assert (first.failed, first.acked) == (1, 1)
    assert bus.pending_count(T, G) == 1
    pending = Delivery(T, "acme", entry_id, {"n": "1"}, 1, getattr(bus, "namespace", "sb"))
    assert bus.last_failure(G, pending) == "RuntimeError: database is down"
    outcomes = iter([None])
    wait_for(lambda: consumer.process_available().acked)
    assert (entry_id, 2) in handled
    assert bus.pending_count(T, G) == 0
    assert bus.last_failure(G, pending) is None
    assert bus.dead_letters(T, "acme") == []


def test_streams_are_trimmed_to_about_maxlen(make_bus: BusFactory) -> None:
    bus = make_bus(maxlen=20)
    last = ""
    for i in range(1000):
        last = bus.publish(T, "acme", {"i": str(i)})
    length = bus.stream_length(T, "acme")
    # Redis trims whole radix-tree nodes (MAXLEN ~), so a node's worth of slack (100 by default) is allowed.
    assert 20 <= length <= 20 + 100
    assert drain(bus)[-1].id == last


def test_entry_trimmed_while_pending_is_dead_lettered_not_lost(make_bus: BusFactory) -> None:
    bus = make_bus(maxlen=20)
    first = bus.publish(T, "acme", {"i": "first"})
    assert [d.id for d in bus.read(T, G, "c1", count=1, block_ms=1000)] == [first]
    for i in range(500):
        bus.publish(T, "acme", {"i": str(i)})
    claimed = bus.claim_stale(T, G, "c2", min_idle_ms=0, count=10)
    assert first not in {d.id for d in claimed}
    [letter] = bus.dead_letters(T, "acme")
    assert (letter.original_id, letter.reason, letter.fields) == (first, TRIMMED_REASON, {})


def test_unknown_fields_survive_the_round_trip(bus: Bus) -> None:
    fields = {
        "type": "InboundMessage", "v": "7", "body": '{"text": "héllo 👋", "nested": {"a": [1, 2]}}',
        "x-trace-id": "00-abc-01", "empty": "", "dl": "not ours", "reason": "customer field, not a bus one",
    }
    bus.publish(T, "acme", fields)
    [d] = bus.read(T, G, "c1", count=10, block_ms=1000)
    assert d.fields == fields
    bus.dead_letter(G, d, "checking the dead-letter copy")
    [letter] = bus.dead_letters(T, "acme")
    assert letter.fields == fields and letter.reason == "checking the dead-letter copy"
    assert bus.pending_count(T, G) == 0


def test_two_consumers_in_a_group_get_disjoint_entries(bus: Bus) -> None:
    for i in range(40):
        bus.publish(T, f"t{i % 4}", {"i": str(i)})
    a = bus.read(T, G, "a", count=8, block_ms=1000)
    b = bus.read(T, G, "b", count=8, block_ms=1000)
    assert len(a) == 8 and len(b) == 8
    assert not {(d.tenant_id, d.id) for d in a} & {(d.tenant_id, d.id) for d in b}
    assert len(a + b + drain(bus, "a")) == 40


def test_two_running_consumers_share_work_without_double_processing(bus: Bus) -> None:
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def handler_for(name: str):
        def handler(d: Delivery) -> None:
            with lock:
                seen.append((name, d.tenant_id, d.id))
        return handler

    for i in range(300):
        bus.publish(T, f"t{i % 6}", {"i": str(i)})
    stop = threading.Event()
    consumers = [Consumer(bus, T, G, name, handler_for(name), batch_size=10, block_ms=100, stop=stop)
                 for name in ("a", "b")]
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    for t in threads:
        t.start()
    wait_for(lambda: len(seen) >= 300 and bus.pending_count(T, G) == 0)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(seen) == 300
    assert len({(tenant, entry_id) for _, tenant, entry_id in seen}) == 300


def test_record_dead_keeps_an_entry_that_was_never_published(bus: Bus) -> None:
    fields = {"channel": "telegram", "body": '{"update_id": 1, "message": "\\u0000 not an object"}'}
    bus.record_dead("webhook", "acme", fields, "message is not an object")
    [letter] = bus.dead_letters("webhook", "acme")
    assert (letter.original_id, letter.fields, letter.reason, letter.deliveries) == (
        "", fields, "message is not an object", 0)
    assert letter.extra["dead_at"]
    assert bus.dead_letters("webhook", "globex") == [] and bus.stream_length("webhook", "acme") == 0
    with pytest.raises(ValueError, match="tenant id"):
        bus.record_dead("webhook", "acme:dead", fields, "a tenant id may not spell another key")


def test_read_leaves_skipped_tenants_unread(bus: Bus) -> None:
    for i in range(3):
        bus.publish(T, "acme", {"i": str(i)})
        bus.publish(T, "globex", {"i": str(i)})
    got = bus.read(T, G, "c1", count=10, block_ms=1000, skip={"acme"})
    assert {d.tenant_id for d in got} == {"globex"} and len(got) == 3
    assert bus.read(T, G, "c1", count=10, block_ms=0, skip={"acme", "globex"}) == []
    assert [d.fields["i"] for d in bus.read(T, G, "c1", count=10, block_ms=1000)] == ["0", "1", "2"]


def test_keep_alive_keeps_a_held_entry_from_a_stale_claim_without_counting_a_delivery(bus: Bus) -> None:
    bus.publish(T, "acme", {"x": "1"})
    [held] = bus.read(T, G, "c1", count=1, block_ms=1000)
    time.sleep(0.3)  # idle long enough for a stale claim
    assert bus.keep_alive(G, "c1", [held]) == [held]
    assert bus.claim_stale(T, G, "c2", min_idle_ms=250, count=10) == []  # just renewed
    [claimed] = wait_for(lambda: bus.claim_stale(T, G, "c2", min_idle_ms=250, count=10))
    assert claimed.deliveries == 2  # the renewal did not count as a delivery
    # c1 lost it to c2: its renewal neither takes it back nor resets c2's claim.
    assert bus.keep_alive(G, "c1", [held]) == []
    assert bus.keep_alive(G, "c2", [claimed]) == [claimed]
    bus.ack(G, [claimed])
    assert bus.keep_alive(G, "c2", [claimed]) == []
    assert bus.pending_count(T, G) == 0


def test_drained_once_the_group_has_acknowledged_every_entry_of_the_tenants_stream(bus: Bus) -> None:
    assert bus.drained(T, G, "acme")  # no stream: nothing to wait for
    bus.publish(T, "acme", {"n": "1"})
    assert not bus.drained(T, G, "acme")  # waiting to be read
    got = bus.read(T, G, "c1", count=10, block_ms=1000)
    assert len(got) == 1
    assert not bus.drained(T, G, "acme")  # held, not acknowledged
    assert not bus.drained(T, "late-group", "acme")  # another group has not even read it
    bus.publish(T, "globex", {"n": "2"})
    bus.ack(G, got)
    assert bus.drained(T, G, "acme")
    assert not bus.drained(T, G, "globex")  # per tenant
    [dead] = bus.read(T, G, "c1", count=10, block_ms=1000)
    bus.dead_letter(G, dead, "unreadable")
    assert bus.drained(T, G, "globex")  # a dead-lettered entry is settled too


def test_stream_stats_sum_tenants_and_count_pending_lag_and_dead_letters(bus: Bus) -> None:
    bus.ensure_group(T, G)
    for tenant in ("acme", "globex"):
        for i in range(3):
            bus.publish(T, tenant, {"n": str(i)})
    stats = bus.stream_stats(T, [G, "other"])
    assert (stats.length, stats.dead_letters) == (6, 0)
    assert stats.lag[G] == 6 and stats.pending[G] == 0
    got = bus.read(T, G, "c1", count=4, block_ms=1000)
    assert len(got) == 4
    bus.ack(G, got[:2])
    bus.dead_letter(G, got[2], "bad payload")
    stats = bus.stream_stats(T, [G])
    assert stats.length == 6  # acknowledged entries stay until trimmed
    assert (stats.pending[G], stats.lag[G], stats.dead_letters) == (1, 2, 1)
    assert bus.stream_stats("nothing-here", [G]).length == 0


def test_erase_removes_a_contacts_entries_and_dead_letters_and_nothing_else(bus: Bus) -> None:
    """A contact's erasure (app/contacts/privacy.py): entries about their messages or conversations go, from
    the stream and the dead letters, on this tenant only."""
    def body(**ids: str) -> dict[str, str]:
        return {"type": "x", "v": "1", "body": json.dumps({"tenant_id": "acme", "text": "hi", **ids})}

    bus.publish(T, "acme", body(message_id="m1", conversation_id="c1"))
    bus.publish(T, "acme", body(message_id="m2", conversation_id="c1"))
    kept = bus.publish(T, "acme", body(message_id="m3", conversation_id="c2"))
    bus.publish(T, "globex", body(message_id="m1", conversation_id="c1"))  # same ids, another tenant
    bus.record_dead(T, "acme", body(message_id="m2", conversation_id="c1"), "it failed")
    bus.record_dead(T, "acme", body(message_id="m9", conversation_id="c9"), "it failed too")

    assert bus.erase("acme", [T], {"c1"}) == 3
    got = bus.read(T, G, "c1", count=10, block_ms=500, skip=["globex"])
    texts = [d.fields.get("body", "") for d in got]
    assert not any('"c1"' in t for t in texts)
    assert kept in [d.id for d in got]
    assert [json.loads(d.fields["body"])["message_id"] for d in bus.dead_letters(T, "acme")] == ["m9"]
    other = bus.read(T, G, "c2", count=10, block_ms=500)
    assert [json.loads(d.fields["body"])["message_id"] for d in other if d.tenant_id == "globex"] == ["m1"]
    assert bus.erase("acme", [T], {"c1"}) == 0  # idempotent

"""Group commit of inbound messages: the batch path keeps every guarantee of `accept_inbound`, on SQLite and
Postgres: one row and one bus entry per provider message, duplicates carry the original's ids, and a failure
fails exactly the callers whose messages it affected."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Sequence

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.bus.memory import MemoryBus
from app.contracts import INBOUND, InboundMessage
from app.conversations.batching import InboundBatcher
from app.conversations.service import Accepted, InboundRequest, accept_inbound, accept_many
from app.db import session_scope
from app.models import Contact, Conversation, Message, utcnow
from app.outbox import GRACE, Relay


class FlakyBus(MemoryBus):
    """A real in-process bus whose publishing can be switched off, as when Redis goes away."""

    broken = False

    def publish(self, topic: str, tenant_id: str, fields: dict[str, str]) -> str:
        if self.broken:
            raise ConnectionError("redis is down")
        return super().publish(topic, tenant_id, fields)


def req(tenant: str, pid: str, contact: str = "c1", **kw: object) -> InboundRequest:
    return InboundRequest(tenant_id=tenant, channel="whatsapp", contact_external_id=contact,
                          provider_message_id=pid, text=f"text {pid}", **kw)  # type: ignore[arg-type]


def events(bus: MemoryBus) -> list[InboundMessage]:
    out: list[InboundMessage] = []
    while batch := bus.read(INBOUND, "g", "c", count=100, block_ms=0):
        out.extend(InboundMessage.model_validate_json(d.fields["body"]) for d in batch)
    return out


def stored(tenant: str) -> list[Message]:
    with session_scope(cross_tenant="tests") as session:
        rows = session.scalars(select(Message).where(Message.tenant_id == tenant).order_by(Message.created_at)).all()
        session.expunge_all()
        return list(rows)


def test_one_batch_with_duplicates_within_it_and_against_the_database(tenant: str) -> None:
    bus = MemoryBus()
    before = accept_inbound(bus, tenant_id=tenant, channel="whatsapp", contact_external_id="c1",
                            provider_message_id="m0", text="earlier")
    got = accept_many(bus, [
        req(tenant, "m1", display_name="Ann"),
        req(tenant, "m0"),                      # stored by an earlier call
        req(tenant, "m2", contact="c2"),        # a new contact: a new conversation
        req(tenant, "m1"),                      # a duplicate within this batch
        req(tenant, "m3", display_name="Annie"),
    ])
    assert [a.duplicate for a in got] == [False, True, False, True, False]
    assert got[1] == Accepted(before.message_id, before.conversation_id, before.contact_id, duplicate=True)
    assert (got[3].message_id, got[3].conversation_id) == (got[0].message_id, got[0].conversation_id)
    assert got[0].conversation_id == got[4].conversation_id == before.conversation_id
    assert got[2].contact_id != got[0].contact_id and got[2].conversation_id != got[0].conversation_id

    published = events(bus)
    assert [e.message_id for e in published] == [before.message_id, got[0].message_id, got[2].message_id,
                                                 got[4].message_id]
    assert [e.provider_message_id for e in published[1:]] == ["m1", "m2", "m3"]
    assert all(e.contact_id == a.contact_id for e, a in zip(published[1:], (got[0], got[2], got[4]), strict=True))
    rows = stored(tenant)
    assert [r.provider_message_id for r in rows] == ["m0", "m1", "m2", "m3"]  # arrival order survives
    assert all(r.status == "received" and r.enqueued_at is not None for r in rows)
    with session_scope(cross_tenant="tests") as session:
        ann = session.get_one(Contact, got[0].contact_id)
        assert ann.display_name == "Annie"  # the last name given wins, as if the calls ran one by one
        assert session.scalar(select(func.count()).select_from(Conversation)
                              .where(Conversation.tenant_id == tenant)) == 2


def test_concurrent_callers_get_one_row_and_one_entry_per_provider_message(tenant: str) -> None:
    bus = MemoryBus()
    batcher = InboundBatcher(bus, max_batch=16, max_wait_s=0.005)
    pids = [f"wamid.{i}" for i in range(40)]
    work = [(pid, f"contact{i % 5}") for i, pid in enumerate(pids)] * 3  # each message delivered three times
    random.Random(7).shuffle(work)
    results: dict[str, list[Accepted]] = defaultdict(list)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def caller(share: list[tuple[str, str]]) -> None:
        for pid, contact in share:
            try:
                accepted = batcher.accept(req(tenant, pid, contact=contact))
            except BaseException as exc:  # collected: a thread's exception would otherwise vanish
                errors.append(exc)
                continue
            with lock:
                results[pid].append(accepted)

    threads = [threading.Thread(target=caller, args=(work[i::12],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(results) == sorted(pids)
    for pid, outcomes in results.items():
        assert len(outcomes) == 3 and sum(not a.duplicate for a in outcomes) == 1, pid
        assert len({(a.message_id, a.conversation_id, a.contact_id) for a in outcomes}) == 1, pid
    originals = {pid: next(a for a in outcomes if not a.duplicate) for pid, outcomes in results.items()}
    published = events(bus)
    assert sorted(e.message_id for e in published) == sorted(a.message_id for a in originals.values())
    assert {e.provider_message_id: e.message_id for e in published} == {
        pid: a.message_id for pid, a in originals.items()}
    assert len(stored(tenant)) == 40
    # One contact and one conversation per customer, however batched
    with session_scope(cross_tenant="tests") as session:
        assert session.scalar(select(func.count()).select_from(Contact).where(Contact.tenant_id == tenant)) == 5
        assert session.scalar(select(func.count()).select_from(Conversation)
                              .where(Conversation.tenant_id == tenant)) == 5
    assert batcher.stats.requests == 120 and batcher.stats.failed_batches == 0


def test_a_bus_failure_fails_no_caller_and_an_outbox_relay_publishes_the_batch_later(tenant: str) -> None:
    bus = FlakyBus()
    bus.broken = True
    batcher = InboundBatcher(bus, max_wait_s=0.05)
    got = batcher.accept_all([req(tenant, "a"), req(tenant, "b", contact="c2"), req(tenant, "a")])
    assert [a.duplicate for a in got] == [False, False, True]  # committed with their events in the outbox
    assert batcher.stats.failed_batches == 0
    rows = stored(tenant)
    assert sorted(r.provider_message_id for r in rows) == ["a", "b"]
    assert all(r.status == "received" for r in rows)
    assert events(bus) == []

    bus.broken = False
    retried = batcher.accept_all([req(tenant, "a"), req(tenant, "b", contact="c2")])  # providers' retries, if any
    assert [a.duplicate for a in retried] == [True, True]
    assert {a.message_id for a in retried} == {r.id for r in rows}
    assert events(bus) == []  # a duplicate publishes nothing...
    relay = Relay(bus, clock=lambda: utcnow() + GRACE)
    relay.publish_all_due()
    relay.publish_all_due()  # ...the relay does, once
    assert sorted(e.message_id for e in events(bus) if e.tenant_id == tenant) == sorted(r.id for r in rows)
    fresh = batcher.accept(req(tenant, "c"))
    assert not fresh.duplicate and [e.message_id for e in events(bus)] == [fresh.message_id]


def test_published_outbox_entries_go_with_the_next_batchs_commit_or_soon_after(tenant: str) -> None:
    from app.models import OutboxEntry
    from tests.bus.conftest import wait_for

    def entries_of(message_id: str) -> int:
        with session_scope(cross_tenant="tests") as session:
            return len(session.scalars(select(OutboxEntry.id).where(OutboxEntry.message_id == message_id)).all())

    bus = MemoryBus()
    batcher = InboundBatcher(bus, max_wait_s=0.01)
    first = batcher.accept(req(tenant, "a"))
    second = batcher.accept(req(tenant, "b"))
    assert entries_of(first.message_id) == 0  # deleted with the second batch's commit, if not before
    wait_for(lambda: entries_of(second.message_id) == 0)  # no third batch: deleted once the writer idles
    Relay(bus, clock=lambda: utcnow() + GRACE).publish_all_due()
    assert [e.message_id for e in events(bus) if e.tenant_id == tenant] == [first.message_id, second.message_id]


def test_a_message_the_database_rejects_fails_alone(tenant: str) -> None:
    bus = MemoryBus()
    batcher = InboundBatcher(bus, max_wait_s=0.05)
    bad = req(tenant, "bad", contact="new", channel_account_id="no-such-account")  # foreign key violation
    results: list[Accepted | BaseException | None] = [None] * 3

    def call(i: int, request: InboundRequest) -> None:
        try:
            results[i] = batcher.accept(request)
        except BaseException as exc:
            results[i] = exc

    # Started together, they share a batch (the writer waits 50 ms for stragglers); either way, only `bad` fails.
    threads = [threading.Thread(target=call, args=(i, r)) for i, r in enumerate([req(tenant, "ok1"), bad,
                                                                                  req(tenant, "ok2")])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[1], IntegrityError)
    assert isinstance(results[0], Accepted) and isinstance(results[2], Accepted)
    assert sorted(r.provider_message_id for r in stored(tenant)) == ["ok1", "ok2"]
    assert sorted(e.provider_message_id for e in events(bus)) == ["ok1", "ok2"]


def test_a_malformed_request_is_refused_before_it_joins_a_batch(tenant: str) -> None:
    batcher = InboundBatcher(MemoryBus())
    with pytest.raises(ValidationError):
        batcher.accept(req(tenant, "x", kind="hologram"))
    with pytest.raises(ValueError, match="invalid tenant id"):
        batcher.accept(req("acme:dead", "x"))
    assert batcher.stats.batches == 0 and stored(tenant) == []


class HeldBus(MemoryBus):
    """A real in-process bus whose publishing waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.publishing, self.go = threading.Event(), threading.Event()

    def publish_many(self, topic: str, entries: Sequence[tuple[str, dict[str, str]]]) -> list[str]:
        self.publishing.set()
        assert self.go.wait(10)
        return super().publish_many(topic, entries)


def test_a_caller_that_stops_waiting_leaves_the_writer_working(tenant: str) -> None:
    """An async caller whose await is cancelled (a shutdown, a timeout) cancels its future while its batch is
    being written: the batch's other callers still get their outcome, the message is stored all the same, and the
    writer takes later messages."""
    bus = HeldBus()
    batcher = InboundBatcher(bus, max_wait_s=0.05)
    gave_up, waiting = batcher.submit_all([req(tenant, "a"), req(tenant, "b")])
    assert bus.publishing.wait(10)
    assert gave_up.cancel()
    bus.go.set()
    assert isinstance(waiting.result(timeout=10), Accepted)
    assert isinstance(batcher.accept(req(tenant, "c")), Accepted)
    assert sorted(m.provider_message_id for m in stored(tenant)) == ["a", "b", "c"]

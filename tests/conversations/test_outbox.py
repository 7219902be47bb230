"""The outbox (app/outbox.py), on SQLite and Postgres: entries commit or roll back with the caller's transaction,
the fast path publishes and deletes them, a relay publishes what is left (oldest first, scheduled entries only
once due), and several relays at once publish every entry (exactly once on Postgres, where they skip each other's
locked rows)."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from app import outbox
from app.bus.memory import MemoryBus
from app.db import session_scope
from app.models import OutboxEntry, utcnow
from tests.conftest import Graph

T = "inbound"


@pytest.fixture(autouse=True)
def empty_outbox(tenant: str) -> None:
    """Relays publish every tenant's entries, and the Postgres database is shared by the session's tests (one at a
    time): start from an empty outbox so counts are this test's."""
    with session_scope(cross_tenant="tests") as session:
        session.execute(delete(OutboxEntry))


def _add(tenant: str, count: int, *, not_before: datetime | None = None) -> list[outbox.Pending]:
    with session_scope(cross_tenant="tests") as session:
        return outbox.add(session, [outbox.Entry(T, tenant, {"n": str(i)}) for i in range(count)],
                          not_before=not_before)


def _published(bus: MemoryBus) -> list[str]:
    out: list[str] = []
    while batch := bus.read(T, "g", "c", count=100, block_ms=0):
        out.extend(d.fields["n"] for d in batch)
    return out


def _left(tenant: str) -> int:
    with session_scope(cross_tenant="tests") as session:
        return session.scalar(select(func.count()).select_from(OutboxEntry)
                              .where(OutboxEntry.tenant_id == tenant)) or 0


def test_entries_roll_back_with_the_transaction_that_wrote_them(tenant: str) -> None:
    with pytest.raises(RuntimeError), session_scope(cross_tenant="tests") as session:
        outbox.add(session, [outbox.Entry(T, tenant, {"n": "0"})])
        raise RuntimeError("the state change failed")
    assert _left(tenant) == 0


def test_an_entry_the_bus_would_refuse_fails_its_writer_not_the_relay(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant id"), session_scope(cross_tenant="tests") as session:
        outbox.add(session, [outbox.Entry(T, "acme:dead", {"n": "0"})])
    with pytest.raises(TypeError), session_scope(cross_tenant="tests") as session:
        outbox.add(session, [outbox.Entry(T, tenant, {"n": 0})])  # type: ignore[dict-item]
    assert _left(tenant) == 0


def test_the_fast_path_publishes_then_deletes(tenant: str) -> None:
    bus = MemoryBus()
    outbox.publish_now(bus, _add(tenant, 3))
    assert _published(bus) == ["0", "1", "2"]
    assert _left(tenant) == 0


def test_the_relay_leaves_an_entry_to_its_writer_for_the_grace_then_publishes_oldest_first(tenant: str) -> None:
    bus = MemoryBus()
    _add(tenant, 5)  # committed, never published: the writer died
    assert outbox.Relay(bus).publish_all_due() == 0
    relay = outbox.Relay(bus, clock=lambda: utcnow() + outbox.GRACE, batch=2)
    assert relay.publish_all_due() == 5
    assert _published(bus) == ["0", "1", "2", "3", "4"]
    assert relay.publish_all_due() == 0 and _left(tenant) == 0


def test_a_scheduled_entry_is_published_once_due_and_not_before(tenant: str) -> None:
    bus = MemoryBus()
    now = utcnow()
    _add(tenant, 1, not_before=now + timedelta(seconds=6))
    relay = outbox.Relay(bus, clock=lambda: now + timedelta(seconds=5))
    assert relay.publish_all_due() == 0
    assert relay.next_due() == now + timedelta(seconds=6)
    relay.clock = lambda: now + timedelta(seconds=6)
    assert relay.publish_all_due() == 1 and _published(bus) == ["0"]
    assert relay.next_due() is None


def test_a_relay_that_cannot_publish_keeps_the_entries(tenant: str) -> None:
    class DownBus(MemoryBus):
        def publish(self, topic: str, tenant_id: str, fields: dict[str, str]) -> str:
            raise ConnectionError("redis is down")

    _add(tenant, 2)
    later = lambda: utcnow() + outbox.GRACE  # noqa: E731
    with pytest.raises(ConnectionError):
        outbox.Relay(DownBus(), clock=later).publish_due()
    assert _left(tenant) == 2
    bus = MemoryBus()
    assert outbox.Relay(bus, clock=later).publish_all_due() == 2 and _published(bus) == ["0", "1"]


def test_several_relays_at_once_publish_every_entry(tenant: str) -> None:
    bus = MemoryBus()
    with session_scope(cross_tenant="tests") as session:
        postgres = session.get_bind().dialect.name == "postgresql"
    _add(tenant, 300)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def relay() -> None:
        try:
            start.wait()
            outbox.Relay(bus, clock=lambda: utcnow() + outbox.GRACE, batch=10).publish_all_due()
        except BaseException as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    published = _published(bus)
    assert set(published) == {str(i) for i in range(300)} and _left(tenant) == 0
    if postgres:  # FOR UPDATE SKIP LOCKED: each entry taken by one relay
        assert len(published) == 300


def test_the_scale_out_api_process_runs_a_relay(tenant: str, graph: Graph, redis_namespace: str) -> None:
    """Scale-out `serve` writes (inbound messages, review decisions) without running the orchestrator: it relays
    its own leftovers (embedded, the relay is one of `RoleThreads`)."""
    from fastapi.testclient import TestClient

    from app.bootstrap import container
    from app.main import create_app
    from tests.bus.conftest import wait_for
    from tests.conftest import REDIS_TEST_URL

    graph.configure(redis_url=REDIS_TEST_URL, bus_namespace=redis_namespace)
    with TestClient(create_app(run_workers=False)):
        _add(tenant, 1, not_before=utcnow())  # due now: as if its writer had died a grace ago
        wait_for(lambda: container().bus.stream_length(T, tenant) == 1)
    assert _left(tenant) == 0


def test_an_entry_a_relay_publishes_later_continues_the_trace_it_was_written_in(tenant: str, traced) -> None:
    from app import tracing
    from tests.traces import ancestry, one

    bus = MemoryBus()
    with tracing.span("intake"), session_scope(cross_tenant="tests") as session:
        outbox.add(session, [outbox.Entry.of(T, _inbound(tenant), "m1")])  # the writer dies before publishing
    assert outbox.Relay(bus, clock=lambda: utcnow() + outbox.GRACE).publish_all_due() == 1
    (delivery,) = bus.read(T, "g", "c", count=10, block_ms=0)
    spans = traced.spans()
    publish = one(spans, "publish inbound")
    assert publish.attributes["switchboard.outbox.relayed"] is True
    assert ancestry(spans, publish) == ["intake", "publish inbound"]
    # The entry on the bus names its publish span as the parent of whoever consumes it.
    assert delivery.fields["traceparent"].startswith(f"00-{publish.trace_id}-{publish.span_id}-")


def _inbound(tenant: str):
    from app.contracts import InboundMessage

    return InboundMessage(tenant_id=tenant, message_id="m1", conversation_id="c1", contact_id="k1",
                          channel="webchat", provider_message_id="p1", text="hello")


# --- Publisher: the published entries deleted with the tenant's next transaction ---------------------------------


def _write(publisher: outbox.Publisher, tenant: str, n: str) -> list[outbox.Pending]:
    with session_scope(tenant=tenant) as session:
        return publisher.add(session, [outbox.Entry(T, tenant, {"n": n})])


def _second_tenant() -> str:
    from app.tenants.service import create_tenant

    with session_scope(cross_tenant="tests") as session:
        return create_tenant(session, f"other-{uuid.uuid4().hex}").tenant.id


def test_a_publishers_entries_are_deleted_with_its_tenants_next_transaction(tenant: str) -> None:
    bus = MemoryBus()
    publisher = outbox.Publisher(bus, forget_after_s=3600)  # no flush: only the next transaction deletes
    other = _second_tenant()
    publisher.publish(_write(publisher, tenant, "0"))
    assert _published(bus) == ["0"] and _left(tenant) == 1 and publisher.waiting() == 1
    publisher.publish(_write(publisher, other, "x"))  # another tenant's transaction leaves them alone
    assert _left(tenant) == 1 and _left(other) == 1 and publisher.waiting() == 2
    publisher.publish(_write(publisher, tenant, "1"))
    assert sorted(_published(bus)) == ["1", "x"]
    assert _left(tenant) == 1 and publisher.waiting() == 2  # "0" deleted with "1"'s commit; "1" and "x" wait
    assert outbox.Relay(bus, clock=lambda: utcnow() + outbox.GRACE).publish_all_due() == 2  # had the process died
    assert sorted(_published(bus)) == ["1", "x"]


def test_a_publisher_deletes_what_no_later_transaction_took_soon_after(tenant: str) -> None:
    from tests.bus.conftest import wait_for

    bus = MemoryBus()
    publisher = outbox.Publisher(bus, forget_after_s=0.05)
    publisher.publish(_write(publisher, tenant, "0"))
    wait_for(lambda: _left(tenant) == 0)
    assert publisher.waiting() == 0
    assert outbox.Relay(bus, clock=lambda: utcnow() + outbox.GRACE).publish_all_due() == 0
    assert _published(bus) == ["0"]


def test_a_publisher_holds_at_most_its_limit(tenant: str) -> None:
    publisher = outbox.Publisher(MemoryBus(), forget_after_s=3600, limit=2)
    for n in "01":
        with session_scope(cross_tenant="tests") as session:  # a cross-tenant writer deletes nothing of them
            publisher.publish(publisher.add(session, [outbox.Entry(T, tenant, {"n": n})]))
    assert publisher.waiting() == 2 and _left(tenant) == 2
    publisher.publish(_add(tenant, 1))  # over the limit: everything is deleted at once
    assert publisher.waiting() == 0 and _left(tenant) == 0


def test_a_delete_that_rolls_back_with_its_transaction_waits_again(tenant: str) -> None:
    publisher = outbox.Publisher(MemoryBus(), forget_after_s=3600)
    publisher.publish(_write(publisher, tenant, "0"))
    with pytest.raises(RuntimeError), session_scope(tenant=tenant) as session:
        publisher.add(session, [outbox.Entry(T, tenant, {"n": "1"})])
        assert publisher.waiting() == 0
        raise RuntimeError("the outcome failed")
    assert _left(tenant) == 1 and publisher.waiting() == 1  # "0" still there, and still to delete
    publisher.flush()
    assert _left(tenant) == 0 and publisher.waiting() == 0

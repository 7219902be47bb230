"""The redrive sweep (app/conversations/redrive.py), on SQLite and Postgres: it re-publishes the event of a
message still waiting long after it was enqueued, inbound or outbound, only when that event was lost; a message
that is merely backlogged (its event waiting in the stream, held by a consumer, or scheduled in the outbox) is
left alone."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app import outbox
from app.bus.memory import MemoryBus
from app.contracts import INBOUND, OUTBOUND, Event, InboundMessage, OutboundMessage
from app.conversations.redrive import REDRIVE_AFTER, mark_outbound_dead, redrive_stale
from app.conversations.replies import add_outbound
from app.conversations.service import accept_inbound
from app.db import session_scope
from app.models import Conversation, Message, utcnow

LATER = REDRIVE_AFTER + timedelta(seconds=1)


def _sweep(bus: MemoryBus, tenant: str, *, after: timedelta = LATER) -> int:
    """Events the sweep published for `tenant` (the database is shared with other tests' tenants)."""
    def published() -> int:
        return bus.stream_length(INBOUND, tenant) + bus.stream_length(OUTBOUND, tenant)

    before = published()
    redrive_stale(bus, inbound_group="orchestrator", outbound_group="dispatcher", now=utcnow() + after)
    return published() - before


def _accept(bus: MemoryBus, tenant: str, pid: str) -> str:
    return accept_inbound(bus, tenant_id=tenant, channel="webchat", contact_external_id="v1",
                          provider_message_id=pid, text=f"question {pid}").message_id


def _events(bus: MemoryBus, topic: str, group: str, tenant: str) -> list[Event]:
    """The tenant's events the group had not read yet (now read and acknowledged)."""
    out: list[Event] = []
    while batch := bus.read(topic, group, "c", count=100, block_ms=0):
        out.extend(Event.from_bus(d.fields) for d in batch if d.tenant_id == tenant)
        bus.ack(group, batch)
    return out


def test_a_backlogged_or_held_inbound_message_is_left_alone(tenant: str) -> None:
    bus = MemoryBus()
    bus.ensure_group(INBOUND, "orchestrator")
    _accept(bus, tenant, "m1")
    assert _sweep(bus, tenant) == 0  # its event waits in the stream, however long
    held = bus.read(INBOUND, "orchestrator", "busy", count=100, block_ms=0)
    assert [d.tenant_id for d in held].count(tenant) == 1  # (the sweep may have redriven other tests' messages)
    assert _sweep(bus, tenant) == 0  # a consumer holds it (and the bus reclaims it if that consumer died)
    assert bus.stream_length(INBOUND, tenant) == 1


def test_an_inbound_message_whose_event_was_lost_is_redriven_once(tenant: str) -> None:
    bus = MemoryBus()
    message_id = _accept(bus, tenant, "m1")
    lost = bus.read(INBOUND, "orchestrator", "c", count=10, block_ms=0)
    bus.ack("orchestrator", lost)  # gone from the bus, yet the message was never handled
    assert _sweep(bus, tenant, after=timedelta(seconds=30)) == 0  # not stale yet
    assert _sweep(bus, tenant) == 1
    events = _events(bus, INBOUND, "orchestrator", tenant)
    assert [(type(e), e.message_id) for e in events] == [(InboundMessage, message_id)]  # type: ignore[attr-defined]
    assert _sweep(bus, tenant) == 0  # just redriven: not a candidate again until REDRIVE_AFTER has passed
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, message_id).status == "received"


def test_a_message_scheduled_in_the_outbox_is_left_alone(tenant: str) -> None:
    bus = MemoryBus()
    message_id = _accept(bus, tenant, "m1")
    delivered = bus.read(INBOUND, "orchestrator", "c", count=10, block_ms=0)
    # As the orchestrator does in a burst window: re-delivery scheduled
    with session_scope(cross_tenant="tests") as session:
        outbox.add(session, [outbox.Entry(INBOUND, tenant, delivered[0].fields, message_id)],
                   not_before=utcnow() + timedelta(hours=1))
    bus.ack("orchestrator", delivered)
    assert _sweep(bus, tenant) == 0


def test_a_pending_reply_whose_event_was_lost_is_redriven_but_not_a_backlogged_one(tenant: str) -> None:
    bus = MemoryBus()
    message_id = _accept(bus, tenant, "m1")
    with session_scope(cross_tenant="tests") as session:
        conversation = session.get_one(Conversation, session.get_one(Message, message_id).conversation_id)
        reply, _ = add_outbound(session, conversation, key=f"reply:{message_id}", text="Here you go.", author="bot",
                                in_reply_to_id=message_id)
        session.get_one(Message, message_id).status = "answered"
        reply_id = reply.id
    assert _sweep(bus, tenant) == 1  # committed, its event never reached the bus
    assert [e.message_id for e in _events(bus, OUTBOUND, "observer", tenant)] == [reply_id]  # type: ignore[attr-defined]
    assert _sweep(bus, tenant, after=2 * LATER) == 0  # its event waits for the dispatcher: backlogged
    assert [type(e) for e in _events(bus, OUTBOUND, "dispatcher", tenant)] == [OutboundMessage]  # taken, acked, lost
    assert _sweep(bus, tenant, after=2 * LATER) == 1


def test_a_dead_lettered_reply_is_failed_not_redriven_forever(tenant: str) -> None:
    bus = MemoryBus()
    message_id = _accept(bus, tenant, "m1")
    with session_scope(cross_tenant="tests") as session:
        conversation = session.get_one(Conversation, session.get_one(Message, message_id).conversation_id)
        reply, _ = add_outbound(session, conversation, key=f"reply:{message_id}", text="Hi", author="bot")
        reply_id = reply.id
    mark_outbound_dead("another-tenant", reply_id, "not yours")  # scoped to the tenant: changes nothing
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, reply_id).status == "pending"
    mark_outbound_dead(tenant, reply_id, "channel refused it 5 times")
    with session_scope(cross_tenant="tests") as session:
        reply = session.scalars(select(Message).where(Message.id == reply_id)).one()
        assert (reply.status, reply.error) == ("failed", "channel refused it 5 times")
    assert _events(bus, OUTBOUND, "observer", tenant) == []
    assert _sweep(bus, tenant) == 0

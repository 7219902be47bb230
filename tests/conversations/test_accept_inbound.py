"""The durable enqueue every gateway calls: one row per provider message, nothing lost when the bus fails."""

from __future__ import annotations

from sqlalchemy import func, select

from app.bus.memory import MemoryBus
from app.contracts import INBOUND, Event, InboundMessage
from app.conversations.service import accept_inbound
from app.db import session_scope
from app.models import Contact, Conversation, Message, OutboxEntry, utcnow
from app.outbox import GRACE, Relay


class BrokenBus(MemoryBus):
    def publish(self, topic: str, tenant_id: str, fields: dict[str, str]) -> str:
        raise ConnectionError("redis is down")


def _accept(bus: MemoryBus, tenant: str, pid: str, contact: str = "c1") -> object:
    return accept_inbound(bus, tenant_id=tenant, channel="whatsapp", contact_external_id=contact,
                          provider_message_id=pid, text=f"text {pid}", display_name="Ann")


def test_one_row_one_event_per_provider_message(tenant: str) -> None:
    bus = MemoryBus()
    first = _accept(bus, tenant, "wamid.1")
    again = _accept(bus, tenant, "wamid.1")
    second = _accept(bus, tenant, "wamid.2")
    assert again.duplicate and again.message_id == first.message_id  # type: ignore[attr-defined]
    assert second.conversation_id == first.conversation_id  # type: ignore[attr-defined]
    assert bus.stream_length(INBOUND, tenant) == 2
    event = Event.from_bus(bus.read(INBOUND, "g", "c", count=1, block_ms=0)[0].fields)
    assert isinstance(event, InboundMessage) and event.message_id == first.message_id  # type: ignore[attr-defined]
    with session_scope(cross_tenant="tests") as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.tenant_id == tenant)) == 2
        contact = session.scalars(select(Contact).where(Contact.tenant_id == tenant)).one()
        assert contact.display_name == "Ann" and contact.last_inbound_at is not None
        assert session.scalar(select(func.count()).select_from(Conversation)
                              .where(Conversation.tenant_id == tenant)) == 1


def test_a_bus_outage_loses_nothing_an_outbox_relay_publishes_the_event_once_the_bus_is_back(tenant: str) -> None:
    accepted = _accept(BrokenBus(), tenant, "wamid.9")  # stored with its event in the outbox: the gateway answers 2xx
    assert not accepted.duplicate  # type: ignore[attr-defined]
    with session_scope(cross_tenant="tests") as session:
        row = session.scalars(select(Message).where(Message.provider_message_id == "wamid.9")).one()
        assert row.status == "received"
        assert session.scalar(select(func.count()).select_from(OutboxEntry)
                              .where(OutboxEntry.message_id == row.id)) == 1
    bus = MemoryBus()
    retried = _accept(bus, tenant, "wamid.9")  # a provider's retry finds the row and publishes nothing
    assert retried.duplicate and bus.stream_length(INBOUND, tenant) == 0  # type: ignore[attr-defined]
    Relay(bus).publish_all_due()
    assert bus.stream_length(INBOUND, tenant) == 0  # within its writer's grace: left to the writer
    relay = Relay(bus, clock=lambda: utcnow() + GRACE)  # (the database is shared: it may publish others' too)
    relay.publish_all_due()
    relay.publish_all_due()
    entries = [e for e in bus.read(INBOUND, "g", "c", count=100, block_ms=0) if e.tenant_id == tenant]
    assert [Event.from_bus(e.fields).message_id for e in entries] == [row.id]  # type: ignore[attr-defined]


def test_a_conversation_whose_account_was_deleted_is_bound_to_the_account_the_next_message_came_through(
        tenant: str) -> None:
    """An admin deletes a channel account and adds it again (a rotated USSD token, say): the customers' open
    conversations reply through the new account instead of failing with "no channel account to send from"."""
    from app.models import ChannelAccount
    from app.tenants.service import create_tenant

    with session_scope(cross_tenant="tests") as session:
        other_tenant = create_tenant(session, f"other-{tenant[:8]}").tenant.id

    def account(tenant_id: str, external_id: str) -> str:
        with session_scope(cross_tenant="tests") as session:
            row = ChannelAccount(tenant_id=tenant_id, channel="whatsapp", external_id=external_id, name="wa",
                                 config={})
            session.add(row)
            session.flush()
            return row.id

    def accept(tenant_id: str, pid: str, account_id: str) -> str:
        return accept_inbound(MemoryBus(), tenant_id=tenant_id, channel="whatsapp", contact_external_id="c1",
                              provider_message_id=pid, text="hi", channel_account_id=account_id).conversation_id

    def bound(conversation_id: str) -> str | None:
        with session_scope(cross_tenant="tests") as session:
            return session.get_one(Conversation, conversation_id).channel_account_id

    old = account(tenant, "pn-1")
    conversation = accept(tenant, "wamid.a", old)
    theirs = accept(other_tenant, "wamid.a", account(other_tenant, "pn-theirs"))
    with session_scope(cross_tenant="tests") as session:
        session.delete(session.get_one(ChannelAccount, old))
    assert bound(conversation) is None
    new = account(tenant, "pn-1")
    assert accept(tenant, "wamid.b", new) == conversation and bound(conversation) == new
    # A bound conversation keeps its account; another tenant's is never touched.
    assert accept(tenant, "wamid.c", account(tenant, "pn-2")) == conversation and bound(conversation) == new
    assert bound(theirs) != new

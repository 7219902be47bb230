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


def test_the_one_contact_statements_find_and_touch_what_the_batch_statements_do(tenant: str) -> None:
    """A batch of one contact reads its latest conversation, and touches it, by statements without an expanding
    IN (`_Statements.latest_conversation`, `touch_conversation`): the same rows as the batch statements."""
    from datetime import timedelta

    from sqlalchemy import insert

    from app.conversations.service import statements
    from app.models import new_id

    bus = MemoryBus()
    for i, contact in enumerate(["c1", "c2", "c3", "c4"]):
        _accept(bus, tenant, f"pid.{i}", contact)
    at = utcnow() + timedelta(minutes=1)
    with session_scope(tenant=tenant) as session:
        contacts = {ext: cid for ext, cid in session.execute(select(Contact.external_id, Contact.id)
                                                             .where(Contact.tenant_id == tenant))}
        extra = [  # c2: a later conversation; c3: two later ones created at the same time (the id decides)
            {"contact_id": contacts["c2"], "created_at": at},
            {"contact_id": contacts["c3"], "created_at": at}, {"contact_id": contacts["c3"], "created_at": at},
        ]
        session.execute(insert(Conversation), [
            {"id": new_id(), "tenant_id": tenant, "channel": "whatsapp", "channel_account_id": None, "mode": "bot",
             "updated_at": row["created_at"], **row} for row in extra])
    with session_scope(tenant=tenant) as session:
        sql = statements(session.get_bind().dialect.name)
        batch = {row[0]: tuple(row) for row in session.execute(sql.latest_conversations, {
            "tenants": [tenant], "contacts": sorted(contacts.values())})}
        one = {contact: tuple(session.execute(sql.latest_conversation, {"tenant": tenant, "contact": contact}).one())
               for contact in contacts.values()}
        assert one == batch and len(one) == 4
        latest = one[contacts["c3"]][1]

    def touched(statement: str, values: dict[str, object]) -> dict[str, object]:
        with session_scope(tenant=tenant) as session:
            session.execute(getattr(sql, statement), {**values, "now": at + timedelta(minutes=5)})
            rows = dict(session.execute(select(Conversation.id, Conversation.updated_at)
                                        .where(Conversation.tenant_id == tenant)).all())
            session.rollback()
            return rows

    assert (touched("touch_conversation", {"conversation": latest, "tenant": tenant})
            == touched("touch_conversations", {"ids": [latest], "tenants": [tenant]}))

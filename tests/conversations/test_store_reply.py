"""The orchestrator's reply write (`store_reply`, Core statements): the row `add_outbound` would store, once per
idempotency key, on SQLite and Postgres."""

from __future__ import annotations

from sqlalchemy import select

from app.bus.memory import MemoryBus
from app.conversations.replies import ReplyTo, add_outbound, store_reply
from app.conversations.service import accept_inbound, history
from app.db import session_scope
from app.models import Conversation, Message


def test_a_reply_is_stored_once_per_key_and_reads_back_like_an_orm_one(tenant: str) -> None:
    inbound = accept_inbound(MemoryBus(), tenant_id=tenant, channel="webchat", contact_external_id="v1",
                             provider_message_id="p1", text="Do you ship to Norway?")
    to = ReplyTo(tenant, inbound.conversation_id, "webchat", None)
    citations = [{"document": "shipping.md", "chunk_id": "c1", "score": 0.8}]
    with session_scope(cross_tenant="tests") as session:
        before = session.get_one(Conversation, inbound.conversation_id).updated_at
        stored = store_reply(session, to, key=f"reply:{inbound.message_id}", text="Yes, in 5 days [1].",
                             author="bot", in_reply_to_id=inbound.message_id, citations=citations,
                             meta={"pack_version": 1})
        event = stored.event
    with session_scope(cross_tenant="tests") as session:  # a retry finds the stored reply and writes nothing
        again = store_reply(session, to, key=f"reply:{inbound.message_id}", text="something else", author="bot")
        (reply,) = session.scalars(select(Message).where(Message.tenant_id == tenant, Message.direction == "out"))
        conversation = session.get_one(Conversation, inbound.conversation_id)
        assert history(session, tenant, inbound.conversation_id, before_id=None, turns=6) == [
            ("customer", "Do you ship to Norway?"), ("assistant", "Yes, in 5 days [1].")]
        # The ORM path sees the same key as taken.
        orm_reply, created = add_outbound(session, conversation, key=f"reply:{inbound.message_id}", text="x",
                                          author="bot")
    assert stored.pending and again == stored  # still the dispatcher's to deliver
    assert not created and orm_reply.id == reply.id == event.message_id
    assert (reply.status, reply.author, reply.in_reply_to_id, reply.citations, reply.meta) == (
        "pending", "bot", inbound.message_id, citations, {"pack_version": 1})
    assert reply.created_at is not None and reply.created_at.tzinfo is not None
    assert before is not None and conversation.updated_at is not None and conversation.updated_at >= before
    assert (event.tenant_id, event.conversation_id, event.channel, event.text, event.citations) == (
        tenant, inbound.conversation_id, "webchat", "Yes, in 5 days [1].", citations)
    assert not event.human_agent


def test_a_reply_key_of_another_tenant_is_not_found(tenant: str) -> None:
    """The key lookup is scoped by tenant: another tenant's conversation with the same key gets its own row."""
    from app.tenants.service import create_tenant

    with session_scope(cross_tenant="tests") as session:
        other = create_tenant(session, f"other-{tenant[:8]}").tenant.id
    ids = []
    for owner in (tenant, other):
        inbound = accept_inbound(MemoryBus(), tenant_id=owner, channel="webchat", contact_external_id="v1",
                                 provider_message_id="same", text="hi")
        with session_scope(cross_tenant="tests") as session:
            ids.append(store_reply(session, ReplyTo(owner, inbound.conversation_id, "webchat", None),
                                   key="reply:same", text=f"hello {owner}", author="bot").event.message_id)
    with session_scope(cross_tenant="tests") as session:
        rows = session.execute(select(Message.tenant_id, Message.text).where(Message.id.in_(ids))).all()
    assert ids[0] != ids[1] and sorted(rows) == sorted([(tenant, f"hello {tenant}"), (other, f"hello {other}")])


def test_a_reply_delivered_by_its_own_transaction_is_stored_sent(tenant: str) -> None:
    """`delivered=True` (a channel that delivers in process: the web chat): stored `sent` with its time, as the
    dispatcher would mark it, and nothing left pending; a retry under the same key finds it delivered."""
    inbound = accept_inbound(MemoryBus(), tenant_id=tenant, channel="webchat", contact_external_id="v1",
                             provider_message_id="p1", text="Do you ship to Norway?")
    to = ReplyTo(tenant, inbound.conversation_id, "webchat", None)
    with session_scope(cross_tenant="tests") as session:
        stored = store_reply(session, to, key=f"reply:{inbound.message_id}", text="Yes.", author="bot",
                             in_reply_to_id=inbound.message_id, delivered=True)
    with session_scope(cross_tenant="tests") as session:
        again = store_reply(session, to, key=f"reply:{inbound.message_id}", text="Yes.", author="bot")
        reply = session.get_one(Message, stored.event.message_id)
        assert (reply.status, reply.processed_at is not None) == ("sent", True)
    assert not stored.pending and again == stored

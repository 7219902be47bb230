"""Outbound messages: replies stored under their idempotency key ("reply:<inbound id>", "review:<escalation id>"),
so a retried handler cannot send twice, and the `OutboundMessage` events the dispatcher delivers."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app import tracing
from app.bus.base import Bus
from app.contracts import OUTBOUND, OutboundMessage
from app.conversations.service import CONVERSATIONS, MESSAGES
from app.models import Conversation, Message, new_id, utcnow


def add_outbound(
    session: Session,
    conversation: Conversation,
    *,
    key: str,
    text: str,
    author: str,
    in_reply_to_id: str | None = None,
    citations: list[dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[Message, bool]:
    """Store an outbound message under an idempotency key. Returns (row, created)."""
    existing = session.scalars(
        select(Message).where(
            Message.tenant_id == conversation.tenant_id,
            Message.channel == conversation.channel,
            Message.provider_message_id == key,
        )
    ).first()
    if existing is not None:
        return existing, False
    message = Message(
        tenant_id=conversation.tenant_id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction="out",
        provider_message_id=key,
        text=text,
        status="pending",
        author=author,
        in_reply_to_id=in_reply_to_id,
        citations=citations,
        meta=meta or {},
    )
    session.add(message)
    session.flush()
    conversation.updated_at = utcnow()
    return message, True


def outbound_event(message: Message, conversation: Conversation) -> OutboundMessage:
    return _outbound_event(message.tenant_id, message.id, conversation.id, message.channel,
                           conversation.channel_account_id, message.text, message.citations, message.author)


def _outbound_event(tenant_id: str, message_id: str, conversation_id: str, channel: str,
                    channel_account_id: str | None, text: str, citations: list[dict[str, Any]] | None,
                    author: str | None) -> OutboundMessage:
    return OutboundMessage(
        tenant_id=tenant_id,
        message_id=message_id,
        conversation_id=conversation_id,
        channel=channel,
        channel_account_id=channel_account_id,
        text=text,
        citations=citations or [],
        author=author or "bot",
        human_agent=bool(author and author.startswith("agent:")),
    )


@dataclass(frozen=True)
class ReplyTo:
    """The conversation a reply goes to, as `store_reply` needs it (the orchestrator reads it with its claim), and
    its contact: `recipient` (the channel's id of the contact) and `consent`, read with the claim."""

    tenant_id: str
    conversation_id: str
    channel: str
    channel_account_id: str | None
    recipient: str | None = None
    consent: str | None = None


@dataclass(frozen=True)
class StoredReply:
    """`event`: the reply's `OutboundMessage`. `pending`: the dispatcher still has to deliver it (publish `event`);
    False when this transaction delivered it (`store_reply(delivered=True)`) or an earlier one did."""

    event: OutboundMessage
    pending: bool


# The orchestrator's per-message SQL, built once: each call only binds values (see `_Statements` in service.py).
_EXISTING_REPLY = select(MESSAGES.c.id, MESSAGES.c.text, MESSAGES.c.citations, MESSAGES.c.author,
                         MESSAGES.c.status).where(
    MESSAGES.c.tenant_id == bindparam("tenant"), MESSAGES.c.channel == bindparam("channel"),
    MESSAGES.c.provider_message_id == bindparam("key"),
)
_TOUCH_CONVERSATION = update(CONVERSATIONS).where(
    CONVERSATIONS.c.id == bindparam("conversation"), CONVERSATIONS.c.tenant_id == bindparam("tenant"),
).values(updated_at=bindparam("now", type_=CONVERSATIONS.c.updated_at.type))


@lru_cache(maxsize=4)
def _insert_reply(dialect: str) -> Any:
    """The reply's insert, a no-op (no row returned) when its idempotency key is taken: one statement, where a
    read for the key before every insert cost one more."""
    dialect_insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (dialect_insert(MESSAGES)
            .on_conflict_do_nothing(index_elements=["tenant_id", "channel", "provider_message_id"])
            .returning(MESSAGES.c.id))


def store_reply(
    session: Session,
    to: ReplyTo,
    *,
    key: str,
    text: str,
    author: str,
    in_reply_to_id: str | None = None,
    citations: list[dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
    delivered: bool = False,
) -> StoredReply:
    """`add_outbound` without ORM objects, for the orchestrator's hot path: the same row under the same
    idempotency key, the conversation touched. `delivered`: the channel delivers in process (the web chat reads
    its messages from the database), so this transaction is the delivery and the reply is stored `sent`, as the
    dispatcher would mark it; the caller wakes the visitor on commit. A reply that already has the key is
    returned as it is."""
    reply_id, now = new_id(), utcnow()
    inserted = session.execute(_insert_reply(session.get_bind().dialect.name), {
        "id": reply_id, "tenant_id": to.tenant_id, "conversation_id": to.conversation_id, "channel": to.channel,
        "direction": "out", "provider_message_id": key, "text": text, "status": "sent" if delivered else "pending",
        "author": author, "in_reply_to_id": in_reply_to_id, "citations": citations, "meta": meta or {},
        "created_at": now, "processed_at": now if delivered else None}).first()
    if inserted is None:
        existing = session.execute(_EXISTING_REPLY, {"tenant": to.tenant_id, "channel": to.channel,
                                                     "key": key}).one()
        return StoredReply(_outbound_event(to.tenant_id, existing.id, to.conversation_id, to.channel,
                                           to.channel_account_id, existing.text, existing.citations, existing.author),
                           pending=existing.status == "pending")
    session.execute(_TOUCH_CONVERSATION, {"conversation": to.conversation_id, "tenant": to.tenant_id, "now": now})
    return StoredReply(_outbound_event(to.tenant_id, reply_id, to.conversation_id, to.channel, to.channel_account_id,
                                       text, citations, author), pending=not delivered)


def publish_outbound(bus: Bus, event: OutboundMessage) -> None:
    bus.publish(OUTBOUND, event.tenant_id, tracing.with_context(event.to_bus()))

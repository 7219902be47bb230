"""Contacts, conversations and messages: the rows every channel writes through.

Inbound messages are unique on (tenant, channel, provider message id), so a provider's redelivery, or two
concurrent deliveries of one message, store one row and enqueue one `InboundMessage`. Outbound messages carry
their own idempotency key in the same column ("reply:<inbound id>", "review:<escalation id>"), so a retried
handler cannot send twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.bus.base import Bus
from app.contracts import INBOUND, OUTBOUND, Attachment, InboundMessage, OutboundMessage
from app.db import session_scope
from app.models import Contact, Conversation, Message, utcnow

# A stored inbound row that never reached the bus (the process died between commit and publish) is
# re-published by the provider's next redelivery once it is this old; younger ones are a concurrent twin.
REPUBLISH_AFTER = timedelta(seconds=30)


def get_or_create_contact(
    session: Session, tenant_id: str, channel: str, external_id: str, display_name: str | None = None
) -> Contact:
    stmt = select(Contact).where(
        Contact.tenant_id == tenant_id, Contact.channel == channel, Contact.external_id == external_id
    )
    contact = session.scalars(stmt).first()
    if contact is None:
        try:
            with session.begin_nested():
                contact = Contact(
                    tenant_id=tenant_id, channel=channel, external_id=external_id, display_name=display_name
                )
                session.add(contact)
        except IntegrityError:  # a concurrent request created it first
            contact = session.scalars(stmt).one()
    if display_name and contact.display_name != display_name:
        contact.display_name = display_name
    return contact


def get_or_create_conversation(
    session: Session, tenant_id: str, contact: Contact, channel_account_id: str | None
) -> Conversation:
    conversation = session.scalars(
        select(Conversation)
        .where(Conversation.tenant_id == tenant_id, Conversation.contact_id == contact.id)
        .order_by(Conversation.created_at.desc())
    ).first()
    if conversation is None:
        conversation = Conversation(
            tenant_id=tenant_id,
            contact_id=contact.id,
            channel=contact.channel,
            channel_account_id=channel_account_id,
        )
        session.add(conversation)
        session.flush()
    return conversation


@dataclass(frozen=True)
class Accepted:
    message_id: str
    conversation_id: str
    contact_id: str
    duplicate: bool


def accept_inbound(
    bus: Bus,
    *,
    tenant_id: str,
    channel: str,
    contact_external_id: str,
    provider_message_id: str,
    text: str,
    kind: str = "text",
    attachments: list[Attachment] | None = None,
    channel_account_id: str | None = None,
    display_name: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Accepted:
    """The gateway's durable enqueue: store the message once, then publish its event.

    Returns only after the event is on the bus (or the message is a duplicate already on it), so the gateway
    can answer 2xx. If publishing fails the exception propagates, the gateway answers 5xx, and the provider's
    retry re-publishes the stored row.
    """
    with session_scope() as session:
        existing = _find_inbound(session, tenant_id, channel, provider_message_id)
        if existing is None:
            contact = get_or_create_contact(session, tenant_id, channel, contact_external_id, display_name)
            conversation = get_or_create_conversation(session, tenant_id, contact, channel_account_id)
            now = utcnow()
            contact.last_inbound_at = now
            conversation.updated_at = now
            try:
                with session.begin_nested():
                    message = Message(
                        tenant_id=tenant_id,
                        conversation_id=conversation.id,
                        channel=channel,
                        direction="in",
                        provider_message_id=provider_message_id,
                        text=text,
                        status="received",
                        meta={"kind": kind, **(meta or {})},
                    )
                    session.add(message)
            except IntegrityError:
                existing = _find_inbound(session, tenant_id, channel, provider_message_id)
        if existing is not None:
            stale = existing.enqueued_at is None and utcnow() - _aware(existing.created_at) > REPUBLISH_AFTER
            if not stale:
                conversation = session.get_one(Conversation, existing.conversation_id)
                return Accepted(existing.id, existing.conversation_id, conversation.contact_id, duplicate=True)
            message = existing
            conversation = session.get_one(Conversation, message.conversation_id)
        event = InboundMessage(
            tenant_id=tenant_id,
            message_id=message.id,
            conversation_id=conversation.id,
            contact_id=conversation.contact_id,
            channel=channel,
            channel_account_id=channel_account_id,
            provider_message_id=provider_message_id,
            kind=kind,  # type: ignore[arg-type]
            text=text,
            attachments=attachments or [],
        )
    bus.publish(INBOUND, tenant_id, event.to_bus())
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == event.message_id).values(enqueued_at=utcnow()))
    return Accepted(event.message_id, event.conversation_id, event.contact_id, duplicate=existing is not None)


def _find_inbound(session: Session, tenant_id: str, channel: str, provider_message_id: str) -> Message | None:
    return session.scalars(
        select(Message).where(
            Message.tenant_id == tenant_id,
            Message.channel == channel,
            Message.provider_message_id == provider_message_id,
        )
    ).first()


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes even for timezone-aware columns."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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
    return OutboundMessage(
        tenant_id=message.tenant_id,
        message_id=message.id,
        conversation_id=conversation.id,
        channel=message.channel,
        channel_account_id=conversation.channel_account_id,
        text=message.text,
        citations=message.citations or [],
        author=message.author or "bot",
        human_agent=bool(message.author and message.author.startswith("agent:")),
    )


def publish_outbound(bus: Bus, event: OutboundMessage) -> None:
    bus.publish(OUTBOUND, event.tenant_id, event.to_bus())


def history(session: Session, conversation_id: str, *, before_id: str | None, turns: int) -> list[tuple[str, str]]:
    """The last `turns` messages of a conversation as (role, text), oldest first, excluding `before_id`."""
    rows = session.scalars(
        select(Message)
        .where(Message.conversation_id == conversation_id, Message.status.notin_(["failed", "dead"]))
        .order_by(Message.created_at.desc())
        .limit(turns + 1)
    ).all()
    turns_list = [
        ("customer" if m.direction == "in" else "assistant", m.text) for m in rows if m.id != before_id
    ][:turns]
    return list(reversed(turns_list))

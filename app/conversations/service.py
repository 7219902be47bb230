"""Contacts, conversations and messages: the rows every channel writes through.

Inbound messages are unique on (tenant, channel, provider message id), so a provider's redelivery, or two
concurrent deliveries of one message, store one row and enqueue one `InboundMessage`. Outbound messages carry
their own idempotency key in the same column ("reply:<inbound id>", "review:<escalation id>"), so a retried
handler cannot send twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.bus.base import Bus
from app.contracts import INBOUND, OUTBOUND, Attachment, InboundMessage, OutboundMessage
from app.db import session_scope
from app.models import Contact, Conversation, Message, new_id, utcnow

# The redrive sweep (`redrive_stale`) re-publishes inbound rows still `received` this long after they were
# stored: the process that stored one may have died between its commit and its publish.
REDRIVE_AFTER = timedelta(minutes=2)

# The hot path (`accept_inbound`) writes through Core tables: the ORM's unit of work costs more than the SQL.
CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
MESSAGES: Table = Message.__table__  # type: ignore[assignment]


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
    conversation_id = _latest_conversation(session, tenant_id, contact.id)
    if conversation_id is not None:
        return session.get_one(Conversation, conversation_id)
    conversation = Conversation(
        tenant_id=tenant_id, contact_id=contact.id, channel=contact.channel, channel_account_id=channel_account_id
    )
    session.add(conversation)
    session.flush()
    return conversation


def _latest_conversation(session: Session, tenant_id: str, contact_id: str) -> str | None:
    return session.scalar(
        select(Conversation.id)
        .where(Conversation.tenant_id == tenant_id, Conversation.contact_id == contact_id)
        .order_by(Conversation.created_at.desc())
        .limit(1)
    )


def _insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (SQLite and Postgres both do)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


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

    One transaction of upserts (a handful of round trips, one commit), then one XADD. Returns only after the
    event is on the bus, or when the message is a duplicate, so the gateway can answer 2xx. If publishing fails
    the exception propagates and the gateway answers 5xx; a row stored by a process that died before publishing
    is re-published by `redrive_stale`, which the orchestrator role runs periodically.
    """
    now = utcnow()
    with session_scope() as session:
        contact_values: dict[str, Any] = {"last_inbound_at": now}
        if display_name:
            contact_values["display_name"] = display_name
        contact_id = session.scalar(
            _insert(session, CONTACTS)
            .values(id=new_id(), tenant_id=tenant_id, channel=channel, external_id=contact_external_id,
                    display_name=display_name, created_at=now, last_inbound_at=now)
            .on_conflict_do_update(index_elements=["tenant_id", "channel", "external_id"], set_=contact_values)
            .returning(CONTACTS.c.id)
        )
        conversation_id = _latest_conversation(session, tenant_id, contact_id)
        if conversation_id is None:
            conversation_id = new_id()
            session.execute(insert(CONVERSATIONS).values(
                id=conversation_id, tenant_id=tenant_id, contact_id=contact_id, channel=channel,
                channel_account_id=channel_account_id, mode="bot", created_at=now, updated_at=now,
            ))
        message_id = session.scalar(
            _insert(session, MESSAGES)
            .values(id=new_id(), tenant_id=tenant_id, conversation_id=conversation_id, channel=channel,
                    direction="in", provider_message_id=provider_message_id, text=text, status="received",
                    meta={"kind": kind, **(meta or {})}, created_at=now, enqueued_at=now)
            .on_conflict_do_nothing(index_elements=["tenant_id", "channel", "provider_message_id"])
            .returning(MESSAGES.c.id)
        )
        if message_id is None:
            existing = session.execute(
                select(Message.id, Message.conversation_id, Conversation.contact_id)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(Message.tenant_id == tenant_id, Message.channel == channel,
                       Message.provider_message_id == provider_message_id)
            ).one()
            return Accepted(existing[0], existing[1], existing[2], duplicate=True)
        session.execute(update(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id).values(updated_at=now))
    event = InboundMessage(
        tenant_id=tenant_id,
        message_id=message_id,
        conversation_id=conversation_id,
        contact_id=contact_id,
        channel=channel,
        channel_account_id=channel_account_id,
        provider_message_id=provider_message_id,
        kind=kind,  # type: ignore[arg-type]
        text=text,
        attachments=attachments or [],
        received_at=now,
    )
    try:
        bus.publish(INBOUND, tenant_id, event.to_bus())
    except Exception:
        # Leave the row for the provider's retry or the redrive sweep; say it never reached the bus.
        with session_scope() as session:
            session.execute(update(Message).where(Message.id == message_id).values(enqueued_at=None))
        raise
    return Accepted(message_id, conversation_id, contact_id, duplicate=False)


def redrive_stale(bus: Bus, *, older_than: timedelta = REDRIVE_AFTER, limit: int = 500) -> int:
    """Re-publish inbound messages stored but never handled (their publisher died, or their event was lost).

    Safe to run in every orchestrator replica at once: the orchestrator ignores a message that is no longer
    `received`, so a second copy of an event changes nothing.
    """
    cutoff = utcnow() - older_than
    with session_scope() as session:
        rows = session.scalars(
            select(Message)
            .where(Message.direction == "in", Message.status == "received",
                   or_(Message.enqueued_at.is_(None), Message.enqueued_at < cutoff))
            .order_by(Message.created_at)
            .limit(limit)
        ).all()
        events = []
        for message in rows:
            conversation = session.get_one(Conversation, message.conversation_id)
            events.append(InboundMessage(
                tenant_id=message.tenant_id, message_id=message.id, conversation_id=conversation.id,
                contact_id=conversation.contact_id, channel=message.channel,
                channel_account_id=conversation.channel_account_id,
                provider_message_id=message.provider_message_id,
                kind=(message.meta or {}).get("kind", "text"), text=message.text, received_at=message.created_at,
            ))
            message.enqueued_at = utcnow()
    for event in events:
        bus.publish(INBOUND, event.tenant_id, event.to_bus())
    return len(events)


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

"""Test set-up for rows the application itself creates through `accept_inbound` (contacts, conversations), and the
replies that went out."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.contracts import OutboundMessage
from app.models import Contact, Conversation, Message


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
    existing = session.scalars(
        select(Conversation)
        .where(Conversation.tenant_id == tenant_id, Conversation.contact_id == contact.id)
        .order_by(Conversation.created_at.desc())
    ).first()
    if existing is not None:
        return existing
    conversation = Conversation(
        tenant_id=tenant_id, contact_id=contact.id, channel=contact.channel, channel_account_id=channel_account_id
    )
    session.add(conversation)
    session.flush()
    return conversation


def sent_replies(tenants: Collection[str], *, after: Collection[str] = ()) -> list[OutboundMessage]:
    """The tenants' replies that went out (status `sent`), as the events that announced them, oldest first, leaving
    out the ids in `after`. Read from the database: a web chat reply is delivered by the orchestrator's own
    transaction and never crosses the outbound stream; other channels' by the dispatcher."""
    from app.conversations.replies import outbound_event
    from app.db import session_scope

    with session_scope(cross_tenant="tests") as session:
        rows = session.execute(
            select(Message, Conversation).join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.tenant_id.in_(list(tenants)), Message.direction == "out", Message.status == "sent")
            .order_by(Message.created_at)).all()
        return [outbound_event(message, conversation) for message, conversation in rows if message.id not in after]

"""Escalations written the way the orchestrator writes them (row, then `EscalationOpened` on the tenant's events
stream after the commit), for the console and notification tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tests.factories import get_or_create_contact, get_or_create_conversation


@dataclass(frozen=True)
class Opened:
    escalation_id: str
    conversation_id: str
    message_id: str


def open_escalation(tenant_id: str, text: str = "Where is my order?", *, channel: str = "webchat",
                    reason: str = "no_knowledge", draft: str | None = "It ships within 2 days [1].",
                    passages: list[dict] | None = None, publish: bool = True) -> Opened:
    from app.bootstrap import container
    from app.contracts import EVENTS, EscalationOpened
    from app.db import session_scope
    from app.models import Escalation, Message

    contact_ref = f"v_{uuid.uuid4().hex[:8]}"
    with session_scope(cross_tenant="tests") as session:
        contact = get_or_create_contact(session, tenant_id, channel, contact_ref, "Jane Roe")
        conversation = get_or_create_conversation(session, tenant_id, contact, None)
        inbound = Message(tenant_id=tenant_id, conversation_id=conversation.id, channel=channel, direction="in",
                          provider_message_id=f"{contact_ref}:1", text=text, status="escalated")
        session.add(inbound)
        session.flush()
        escalation = Escalation(
            tenant_id=tenant_id, conversation_id=conversation.id, message_id=inbound.id, reason=reason, draft=draft,
            draft_citations=[{"document": "shipping.md", "chunk_id": "c1", "score": 0.71}] if draft else None,
            passages=passages if passages is not None else [
                {"document": "shipping.md", "heading": "Delivery times", "chunk_id": "c1",
                 "text": "Orders ship within 2 business days.", "score": 0.71, "rank": 1},
            ],
        )
        session.add(escalation)
        session.flush()
        opened = Opened(escalation.id, conversation.id, inbound.id)
    if publish:
        event = EscalationOpened(tenant_id=tenant_id, escalation_id=opened.escalation_id,
                                 conversation_id=opened.conversation_id, message_id=opened.message_id, reason=reason)
        container().bus.publish(EVENTS, tenant_id, event.to_bus())
    return opened

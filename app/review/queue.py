"""What the review console reads: the tenant's open queue, one escalation with what the bot had to answer from,
and the conversation's history. Text is masked (structured PII as `[EMAIL]`, `[PHONE]`...) unless an agent asks
for the raw text, and every such reveal is an audit event (`pii.revealed`) naming the person.

Every query here is scoped to the caller's tenant; an id of another tenant is the same 404 as an unknown one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.assistant.modes import effective_mode
from app.assistant.pii import redact_pii
from app.audit import record
from app.auth import Principal
from app.models import Contact, Conversation, Escalation, Message, Tenant
from app.review.service import ReviewError

QUEUE_LIMIT = 500  # open escalations one console holds (oldest first); the rest show once these are decided
HISTORY_LIMIT = 100  # latest messages of a conversation


def mask(text: str | None) -> str | None:
    """`text` with structured PII replaced by placeholders (the same detector the prompts use)."""
    return None if text is None else redact_pii(text).text


def sla_state(escalation: Escalation) -> str | None:
    """The escalation's first-response SLA (app/review/sla.py): `pending` | `met` | `breached`; None when the
    tenant sets no target (shown as "-")."""
    value = getattr(escalation, "sla_state", None)
    return None if value is None else str(value)


def unsupported_sentences(escalation: Escalation) -> list[str]:
    """The draft's sentences the grounding check found unsupported by the passage they cite
    (app/assistant/grounding.py records them on the escalation's meta)."""
    grounding = (escalation.meta or {}).get("grounding") or {}
    return [str(s["text"]) if isinstance(s, dict) else str(s) for s in grounding.get("unsupported") or ()]


@dataclass(frozen=True)
class QueueItem:
    id: str
    conversation_id: str
    reason: str
    channel: str
    created_at: datetime
    customer_text: str  # masked, at most 280 characters
    has_draft: bool
    mode: str  # the conversation's: bot | human
    assigned_agent: str | None
    sla_state: str | None
    tenant_mode: str = "auto"  # the tenant's mode on this channel: auto | draft | human (app/assistant/modes.py)

    @property
    def stamp(self) -> tuple[Any, ...]:
        """Changes whenever a console should redraw the item."""
        return (self.mode, self.assigned_agent, self.sla_state, self.has_draft, self.tenant_mode)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "conversation_id": self.conversation_id, "reason": self.reason,
                "channel": self.channel, "created_at": self.created_at.isoformat(),
                "customer_text": self.customer_text, "has_draft": self.has_draft, "mode": self.mode,
                "assigned_agent": self.assigned_agent, "sla_state": self.sla_state, "tenant_mode": self.tenant_mode}


def tenant_policies(session: Session, tenant_id: str) -> dict[str, Any]:
    return dict(session.scalar(select(Tenant.policies).where(Tenant.id == tenant_id)) or {})


def open_queue(session: Session, tenant_id: str, limit: int = QUEUE_LIMIT) -> list[QueueItem]:
    policies = tenant_policies(session, tenant_id)
    rows = session.execute(
        select(Escalation, Message.text, Conversation.channel, Conversation.mode, Conversation.assigned_agent)
        .join(Message, Message.id == Escalation.message_id)
        .join(Conversation, Conversation.id == Escalation.conversation_id)
        .where(Escalation.tenant_id == tenant_id, Escalation.status == "open", Conversation.tenant_id == tenant_id)
        .order_by(Escalation.created_at, Escalation.id)
        .limit(limit)
    ).all()
    return [
        QueueItem(id=e.id, conversation_id=e.conversation_id, reason=e.reason, channel=channel,
                  created_at=e.created_at, customer_text=(mask(text) or "")[:280], has_draft=bool(e.draft),
                  mode=mode, assigned_agent=agent, sla_state=sla_state(e),
                  tenant_mode=effective_mode(policies, channel))
        for e, text, channel, mode, agent in rows
    ]


@dataclass(frozen=True)
class ConversationView:
    conversation: Conversation
    contact_name: str | None  # masked
    messages: list[Message]
    tenant_mode: str = "auto"


def conversation_view(session: Session, tenant_id: str, conversation_id: str) -> ConversationView:
    conversation = session.scalars(
        select(Conversation).where(Conversation.id == conversation_id, Conversation.tenant_id == tenant_id)
    ).first()
    if conversation is None:
        raise ReviewError(404, f"no conversation {conversation_id!r} in this tenant")
    contact = session.get(Contact, conversation.contact_id)
    latest = session.scalars(
        select(Message)
        .where(Message.tenant_id == tenant_id, Message.conversation_id == conversation.id)
        .order_by(Message.created_at.desc(), Message.id.desc())
        .limit(HISTORY_LIMIT)
    ).all()
    return ConversationView(conversation, mask(contact.display_name) if contact else None, list(reversed(latest)),
                            effective_mode(tenant_policies(session, tenant_id), conversation.channel))


def reveal_message(session: Session, principal: Principal, message_id: str) -> Message:
    """The raw text of one message of the tenant, recorded as revealed by `principal`."""
    message = session.scalars(
        select(Message).where(Message.id == message_id, Message.tenant_id == principal.tenant_id)
    ).first()
    if message is None:
        raise ReviewError(404, f"no message {message_id!r} in this tenant")
    record(session, principal.tenant_id, principal.actor, "pii.revealed", "message", message.id,
           {"conversation_id": message.conversation_id, "field": "text", "by": principal.label})
    return message


def reveal_escalation(session: Session, principal: Principal, escalation_id: str) -> tuple[Escalation, str]:
    """The raw customer text and draft of one escalation, recorded as revealed by `principal`."""
    escalation = session.scalars(
        select(Escalation).where(Escalation.id == escalation_id, Escalation.tenant_id == principal.tenant_id)
    ).first()
    if escalation is None:
        raise ReviewError(404, f"no escalation {escalation_id!r} in this tenant")
    text = session.get_one(Message, escalation.message_id).text
    record(session, principal.tenant_id, principal.actor, "pii.revealed", "escalation", escalation.id,
           {"conversation_id": escalation.conversation_id, "field": "customer_text,draft", "by": principal.label})
    return escalation, text

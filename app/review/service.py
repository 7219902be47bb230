"""The human review queue: decide escalations, take conversations over and hand them back.

Every decision is one transaction: the escalation's new state, the outbound message (under an idempotency key,
so a retried request cannot send twice), the audit event, and the events to publish, in the outbox: published
right after the commit, or by an outbox relay if that fails or the process dies first (app/outbox.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import outbox
from app.assistant.pii_restore import has_placeholder
from app.audit import record
from app.auth import Principal
from app.bus.base import Bus
from app.channels import ChannelRegistry, Permanent
from app.contracts import EVENTS, OUTBOUND, EscalationDecided, OutboundMessage
from app.conversations.replies import add_outbound, outbound_event
from app.models import ChannelAccount, Contact, Conversation, Escalation, utcnow
from app.review import handoffs


class ReviewError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Decided:
    escalation: Escalation
    outbound: OutboundMessage | None
    event: EscalationDecided
    pending: list[outbox.Pending] = field(default_factory=list)  # to publish once committed


@dataclass(frozen=True)
class AgentMessage:
    event: OutboundMessage
    pending: list[outbox.Pending]  # to publish once committed (none for a retried request)


def get_escalation(session: Session, principal: Principal, escalation_id: str, *, lock: bool = False) -> Escalation:
    stmt = select(Escalation).where(Escalation.id == escalation_id, Escalation.tenant_id == principal.tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    escalation = session.scalars(stmt).first()
    if escalation is None:
        raise ReviewError(404, f"no escalation {escalation_id!r} in this tenant")
    return escalation


def get_conversation(session: Session, principal: Principal, conversation_id: str) -> Conversation:
    conversation = session.scalars(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.tenant_id == principal.tenant_id
        ).with_for_update()
    ).first()
    if conversation is None:
        raise ReviewError(404, f"no conversation {conversation_id!r} in this tenant")
    return conversation


def decide(
    session: Session, principal: Principal, escalation_id: str, decision: str, text: str | None = None,
    note: str | None = None, *, channels: ChannelRegistry,
) -> Decided:
    """`channels`: the process's channel specs, whose reply policy a sent text must pass."""
    escalation = get_escalation(session, principal, escalation_id, lock=True)
    if escalation.status != "open":
        raise ReviewError(
            409, f"escalation already {escalation.status} by {escalation.reviewer} at {escalation.decided_at}"
        )
    conversation = session.get_one(Conversation, escalation.conversation_id)
    if decision == "approve":
        if not escalation.draft:
            raise ReviewError(422, "this escalation has no draft to approve: use 'edit' with the reply text")
        if has_placeholder(escalation.draft):
            raise ReviewError(422, "the draft holds a placeholder such as [EMAIL] that the customer would see: "
                                   "use 'edit' with the reply text")
        text = escalation.draft
    elif decision == "edit":
        if not text or not text.strip():
            raise ReviewError(422, "text is required to edit and send")
        text = text.strip()
    elif decision in ("reject", "takeover"):
        text = None
    else:
        raise ReviewError(422, f"unknown decision {decision!r}")

    outbound = None
    if text is not None:
        _check_channel_allows_reply(session, channels, conversation)
        reply, _ = add_outbound(
            session, conversation, key=f"review:{escalation.id}", text=text, author=f"agent:{principal.name}",
            in_reply_to_id=escalation.message_id,
            citations=escalation.draft_citations if decision == "approve" else None,
            meta={"escalation_id": escalation.id},
        )
        outbound = outbound_event(reply, conversation)
    now = utcnow()
    if decision == "takeover":
        conversation.mode = "human"
        conversation.assigned_agent = principal.label
        handoffs.start(session, principal.tenant_id, conversation.id, principal.label, now,
                       escalation_id=escalation.id)
    escalation.status = {"approve": "approved", "edit": "approved", "reject": "rejected",
                         "takeover": "taken_over"}[decision]
    escalation.decision = decision
    escalation.final_text = text
    escalation.reviewer = principal.label
    escalation.decided_at = now
    if escalation.sla_state == "pending":
        escalation.sla_state = "met"  # a person acted before the first-response target (app/review/sla.py)
    record(session, principal.tenant_id, principal.actor, f"escalation.{decision}", "escalation", escalation.id, {
        "text": text, "draft": escalation.draft, "note": note,
    })
    event = EscalationDecided(tenant_id=principal.tenant_id, escalation_id=escalation.id,
                              conversation_id=conversation.id, decision=decision,  # type: ignore[arg-type]
                              reviewer=principal.label)
    entries = [outbox.Entry.of(OUTBOUND, outbound, outbound.message_id)] if outbound is not None else []
    pending = outbox.add(session, [*entries, outbox.Entry.of(EVENTS, event)])
    session.flush()
    return Decided(escalation, outbound, event, pending)


def _check_channel_allows_reply(session: Session, channels: ChannelRegistry, conversation: Conversation) -> None:
    """Refuse, before anything is stored, a reply the channel would never deliver (its `ReplyPolicy`: WhatsApp's
    24-hour rule)."""
    spec = channels.find(conversation.channel)
    if spec is None or spec.reply_policy.window is None:
        return
    contact = session.get_one(Contact, conversation.contact_id)
    account = session.get(ChannelAccount, conversation.channel_account_id) if conversation.channel_account_id else None
    template = ((account.config or {}) if account else {}).get("template") or {}
    try:
        spec.reply_policy.mode(now=utcnow(), last_inbound_at=contact.last_inbound_at, by_human=True,
                               has_template=bool(template.get("name")))
    except Permanent:
        raise ReviewError(409, "the customer last wrote on WhatsApp over 24 hours ago, so only an approved template "
                               "can be sent: add one to the channel account (config.template) or wait for the "
                               "customer to write again") from None


def publish_decision(bus: Bus, decided: Decided) -> None:
    """After the decision's commit. Never raises: what the bus does not take now, an outbox relay publishes."""
    outbox.publish_now(bus, decided.pending)


def set_mode(session: Session, principal: Principal, conversation_id: str, mode: str) -> Conversation:
    conversation = get_conversation(session, principal, conversation_id)
    conversation.mode = mode
    conversation.assigned_agent = principal.label if mode == "human" else None
    if mode == "human":
        handoffs.start(session, principal.tenant_id, conversation.id, principal.label, utcnow())
    else:
        handoffs.end(session, principal.tenant_id, conversation.id, principal.label, utcnow())
    action = "conversation.takeover" if mode == "human" else "conversation.release"
    record(session, principal.tenant_id, principal.actor, action, "conversation", conversation.id)
    return conversation


def agent_message(
    session: Session, principal: Principal, conversation_id: str, text: str, client_message_id: str, *,
    channels: ChannelRegistry,
) -> AgentMessage:
    conversation = get_conversation(session, principal, conversation_id)
    if conversation.mode != "human":
        raise ReviewError(409, "take the conversation over before writing in it (POST .../takeover)")
    _check_channel_allows_reply(session, channels, conversation)
    reply, created = add_outbound(
        session, conversation, key=f"agent:{conversation.id}:{client_message_id}", text=text,
        author=f"agent:{principal.name}",
    )
    event = outbound_event(reply, conversation)
    if not created:  # a retried request: its message was enqueued by the first one
        return AgentMessage(event, [])
    record(session, principal.tenant_id, principal.actor, "message.sent_by_agent", "message", reply.id)
    return AgentMessage(event, outbox.add(session, [outbox.Entry.of(OUTBOUND, event, event.message_id)]))

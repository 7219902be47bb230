"""Review queue API for human agents: agent or admin API keys, or people's logins (viewers read, agents and up
decide); always the caller's own tenant."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.api.services import Services
from app.assistant.modes import effective_mode
from app.auth import Agent, Viewer
from app.bootstrap import Container
from app.db import session_scope
from app.models import Conversation, Escalation, Message, utcnow
from app.review import service
from app.review.notify import wake_consoles
from app.review.queue import mask, sla_state, tenant_policies, unsupported_sentences

MAX_AGE_S = 100 * 365 * 86_400  # a century: beyond it no escalation exists, and a timedelta overflows
router = APIRouter(prefix="/review/v1", tags=["review queue"])


class EscalationOut(BaseModel):
    """Texts are masked (`[EMAIL]`, `[PHONE]`...): POST .../reveal returns them raw, and is audited."""

    id: str
    conversation_id: str
    message_id: str
    status: str
    reason: str
    detail: str | None
    customer_text: str
    draft: str | None
    draft_citations: list[dict[str, Any]] | None
    meta: dict[str, Any] | None = Field(default=None, description=(
        "What the bot found when it escalated; for `ungrounded`, `grounding.unsupported` lists the draft's "
        "sentences that the passages they cite do not support."))
    decision: str | None
    final_text: str | None
    reviewer: str | None
    created_at: datetime
    decided_at: datetime | None
    channel: str | None = None
    mode: str | None = Field(default=None, description="The conversation's: bot | human (taken over).")
    assigned_agent: str | None = None
    passages: list[dict[str, Any]] | None = Field(
        default=None, description="What retrieval returned for the message (document, heading, text, score), best "
                                  "first; null for escalations opened before it was kept.")
    unsupported: list[str] = Field(default_factory=list, description="Sentences of the draft that the grounding "
                                                                     "check found unsupported (masked).")
    sla_state: str | None = Field(default=None, description="First-response SLA: pending | met | breached; null "
                                                            "without a target.")
    sla_breached_at: datetime | None = None
    tenant_mode: str | None = Field(default=None,
                                    description="The tenant's mode on this channel: auto | draft | human.")
    masked: bool = Field(default=False, description="True when the customer text or the draft had PII masked.")


class DecisionIn(BaseModel):
    decision: Literal["approve", "edit", "reject", "takeover"]
    text: str | None = Field(default=None, max_length=4000, description="The reply to send; required for 'edit'.")
    note: str | None = Field(default=None, max_length=2000, description="Kept in the audit log.")

    model_config = {"json_schema_extra": {"examples": [
        {"decision": "approve"},
        {"decision": "edit", "text": "Yes, you can return it within 30 days.", "note": "softened tone"},
    ]}}


class AgentMessageIn(BaseModel):
    text: str = Field(min_length=1, max_length=4000)
    client_message_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")


class ModeOut(BaseModel):
    conversation_id: str
    mode: str
    assigned_agent: str | None


def _out(escalation: Escalation, customer_text: str, conversation: Conversation | None = None,
         policies: dict[str, Any] | None = None) -> EscalationOut:
    shown_text, shown_draft = mask(customer_text) or "", mask(escalation.draft)
    return EscalationOut(
        id=escalation.id, conversation_id=escalation.conversation_id, message_id=escalation.message_id,
        status=escalation.status, reason=escalation.reason, detail=mask(escalation.detail), customer_text=shown_text,
        draft=shown_draft, draft_citations=escalation.draft_citations, decision=escalation.decision,
        final_text=mask(escalation.final_text), reviewer=escalation.reviewer, created_at=escalation.created_at,
        decided_at=escalation.decided_at, passages=escalation.passages,
        channel=conversation.channel if conversation else None, mode=conversation.mode if conversation else None,
        assigned_agent=conversation.assigned_agent if conversation else None,
        meta=escalation.meta, unsupported=[mask(s) or "" for s in unsupported_sentences(escalation)],
        sla_state=sla_state(escalation), sla_breached_at=escalation.sla_breached_at,
        tenant_mode=effective_mode(policies, conversation.channel) if conversation and policies is not None else None,
        masked=shown_text != customer_text or shown_draft != escalation.draft,
    )


def _raise(exc: service.ReviewError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


@router.get("/escalations", response_model=list[EscalationOut], summary="List the escalation queue")
def list_escalations(
    principal: Viewer,
    status: Annotated[str | None, Query(description="open | approved | rejected | taken_over")] = "open",
    reason: Annotated[str | None, Query(max_length=64, description="e.g. no_knowledge, human_requested")] = None,
    channel: Annotated[str | None, Query(max_length=32, description="webchat | whatsapp | ...")] = None,
    older_than_s: Annotated[int | None, Query(ge=0, le=MAX_AGE_S,
                                              description="Only escalations at least this old.")] = None,
    sla: Annotated[Literal["pending", "met", "breached"] | None,
                   Query(description="Only escalations in this first-response SLA state.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[EscalationOut]:
    """The tenant's escalations, oldest first (the queue order)."""
    with session_scope(tenant=principal.tenant_id) as session:
        stmt = (
            select(Escalation, Message.text, Conversation)
            .join(Message, Message.id == Escalation.message_id)
            .join(Conversation, Conversation.id == Escalation.conversation_id)
            .where(Escalation.tenant_id == principal.tenant_id)
            .order_by(Escalation.created_at)
            .limit(limit)
        )
        if status:
            stmt = stmt.where(Escalation.status == status)
        if reason:
            stmt = stmt.where(Escalation.reason == reason)
        if channel:
            stmt = stmt.where(Conversation.channel == channel)
        if sla:
            stmt = stmt.where(Escalation.sla_state == sla)
        if older_than_s is not None:
            stmt = stmt.where(Escalation.created_at <= utcnow() - timedelta(seconds=older_than_s))
        policies = tenant_policies(session, principal.tenant_id)
        return [_out(e, text, c, policies) for e, text, c in session.execute(stmt).all()]


@router.get("/escalations/{escalation_id}", response_model=EscalationOut, summary="Get an escalation")
def get_escalation(escalation_id: str, principal: Viewer) -> EscalationOut:
    with session_scope(tenant=principal.tenant_id) as session:
        try:
            escalation = service.get_escalation(session, principal, escalation_id)
        except service.ReviewError as exc:
            raise _raise(exc) from exc
        return _out(escalation, session.get_one(Message, escalation.message_id).text,
                    session.get(Conversation, escalation.conversation_id),
                    tenant_policies(session, principal.tenant_id))


@router.post("/escalations/{escalation_id}/decision", response_model=EscalationOut, summary="Decide an escalation")
def decide(escalation_id: str, body: DecisionIn, principal: Agent, services: Services) -> EscalationOut:
    """Approve the draft, edit and send, reject (nothing sent), or take the conversation over (the bot stays
    silent until it is released). An approved or edited text goes out through the conversation's channel."""
    with session_scope(tenant=principal.tenant_id) as session:
        try:
            decided = service.decide(session, principal, escalation_id, body.decision, body.text, body.note,
                                     channels=services.channels)
        except service.ReviewError as exc:
            raise _raise(exc) from exc
        out = _out(decided.escalation, session.get_one(Message, decided.escalation.message_id).text,
                   session.get(Conversation, decided.escalation.conversation_id),
                   tenant_policies(session, principal.tenant_id))
    service.publish_decision(services.bus, decided)
    wake_consoles(services.push, principal.tenant_id)
    return out


@router.post("/conversations/{conversation_id}/takeover", response_model=ModeOut, summary="Take a conversation over")
def takeover(conversation_id: str, principal: Agent, services: Services) -> ModeOut:
    """An agent takes the conversation: the bot stays silent until it is released."""
    return _set_mode(services, conversation_id, principal, "human")


@router.post("/conversations/{conversation_id}/release", response_model=ModeOut,
             summary="Hand a conversation back to the bot")
def release(conversation_id: str, principal: Agent, services: Services) -> ModeOut:
    """Hand the conversation back to the bot."""
    return _set_mode(services, conversation_id, principal, "bot")


def _set_mode(services: Container, conversation_id: str, principal: Agent, mode: str) -> ModeOut:
    with session_scope(tenant=principal.tenant_id) as session:
        try:
            conversation = service.set_mode(session, principal, conversation_id, mode)
        except service.ReviewError as exc:
            raise _raise(exc) from exc
        out = ModeOut(conversation_id=conversation.id, mode=conversation.mode,
                      assigned_agent=conversation.assigned_agent)
    wake_consoles(services.push, principal.tenant_id)
    return out


@router.post("/conversations/{conversation_id}/messages", status_code=202, summary="Write to the customer as an agent")
def send_as_agent(conversation_id: str, body: AgentMessageIn, principal: Agent,
                  services: Services) -> dict[str, str]:
    """Write to the customer during a takeover. Idempotent on `client_message_id`."""
    with session_scope(tenant=principal.tenant_id) as session:
        try:
            sent = service.agent_message(session, principal, conversation_id, body.text, body.client_message_id,
                                         channels=services.channels)
        except service.ReviewError as exc:
            raise _raise(exc) from exc
    from app import outbox

    outbox.publish_now(services.bus, sent.pending)
    return {"message_id": sent.event.message_id}

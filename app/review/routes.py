"""Review queue API for human agents (agent or admin keys; always the key's own tenant)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.auth import Agent
from app.db import session_scope
from app.models import Escalation, Message
from app.review import service
from app.runtime import get_bus

router = APIRouter(prefix="/review/v1", tags=["review queue"])


class EscalationOut(BaseModel):
    id: str
    conversation_id: str
    message_id: str
    status: str
    reason: str
    detail: str | None
    customer_text: str
    draft: str | None
    draft_citations: list[dict[str, Any]] | None
    decision: str | None
    final_text: str | None
    reviewer: str | None
    created_at: datetime
    decided_at: datetime | None


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


def _out(escalation: Escalation, customer_text: str) -> EscalationOut:
    return EscalationOut(
        id=escalation.id, conversation_id=escalation.conversation_id, message_id=escalation.message_id,
        status=escalation.status, reason=escalation.reason, detail=escalation.detail, customer_text=customer_text,
        draft=escalation.draft, draft_citations=escalation.draft_citations, decision=escalation.decision,
        final_text=escalation.final_text, reviewer=escalation.reviewer, created_at=escalation.created_at,
        decided_at=escalation.decided_at,
    )


def _raise(exc: service.ReviewError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


@router.get("/escalations", response_model=list[EscalationOut], summary="List the escalation queue")
def list_escalations(
    principal: Agent,
    status: Annotated[str | None, Query(description="open | approved | rejected | taken_over")] = "open",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[EscalationOut]:
    """The tenant's escalations, oldest first (the queue order)."""
    with session_scope() as session:
        stmt = (
            select(Escalation, Message.text)
            .join(Message, Message.id == Escalation.message_id)
            .where(Escalation.tenant_id == principal.tenant_id)
            .order_by(Escalation.created_at)
            .limit(limit)
        )
        if status:
            stmt = stmt.where(Escalation.status == status)
        return [_out(e, text) for e, text in session.execute(stmt).all()]


@router.get("/escalations/{escalation_id}", response_model=EscalationOut, summary="Get an escalation")
def get_escalation(escalation_id: str, principal: Agent) -> EscalationOut:
    with session_scope() as session:
        try:
            escalation = service.get_escalation(session, principal, escalation_id)
        except service.ReviewError as exc:
            raise _raise(exc) from exc
        return _out(escalation, session.get_one(Message, escalation.message_id).text)


@router.post("/escalations/{escalation_id}/decision", response_model=EscalationOut, summary="Decide an escalation")
def decide(escalation_id: str, body: DecisionIn, principal: Agent) -> EscalationOut:
    """Approve the draft, edit and send, reject (nothing sent), or take the conversation over (the bot stays
    silent until it is released). An approved or edited text goes out through the conversation's channel."""
    with session_scope() as session:
        try:
            decided = service.decide(session, principal, escalation_id, body.decision, body.text, body.note)
        except service.ReviewError as exc:
            raise _raise(exc) from exc
        out = _out(decided.escalation, session.get_one(Message, decided.escalation.message_id).text)
    service.publish_decision(get_bus(), decided)
    return out


@router.post("/conversations/{conversation_id}/takeover", response_model=ModeOut, summary="Take a conversation over")
def takeover(conversation_id: str, principal: Agent) -> ModeOut:
    """An agent takes the conversation: the bot stays silent until it is released."""
    return _set_mode(conversation_id, principal, "human")


@router.post("/conversations/{conversation_id}/release", response_model=ModeOut,
             summary="Hand a conversation back to the bot")
def release(conversation_id: str, principal: Agent) -> ModeOut:
    """Hand the conversation back to the bot."""
    return _set_mode(conversation_id, principal, "bot")


def _set_mode(conversation_id: str, principal: Agent, mode: str) -> ModeOut:
    with session_scope() as session:
        try:
            conversation = service.set_mode(session, principal, conversation_id, mode)
        except service.ReviewError as exc:
            raise _raise(exc) from exc
        return ModeOut(conversation_id=conversation.id, mode=conversation.mode,
                       assigned_agent=conversation.assigned_agent)


@router.post("/conversations/{conversation_id}/messages", status_code=202, summary="Write to the customer as an agent")
def send_as_agent(conversation_id: str, body: AgentMessageIn, principal: Agent) -> dict[str, str]:
    """Write to the customer during a takeover. Idempotent on `client_message_id`."""
    with session_scope() as session:
        try:
            sent = service.agent_message(session, principal, conversation_id, body.text, body.client_message_id)
        except service.ReviewError as exc:
            raise _raise(exc) from exc
    from app import outbox

    outbox.publish_now(get_bus(), sent.pending)
    return {"message_id": sent.event.message_id}

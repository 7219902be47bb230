"""Admin API, conversations (`/admin/v1/conversations...`): the tenant's conversations and their messages, read
by agent keys and every role's login (viewers too). Agents and viewers read structured PII masked.

Same rules as the rest of the admin API (app/admin/routes.py): the tenant comes from the caller's key or login
only, another tenant's id is a 404."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from app.admin import schemas as s
from app.admin import service
from app.admin.policy_schemas import Channel
from app.admin.request_limit import LIMITED
from app.admin.routes import CursorQ, Limit, in_transaction
from app.assistant.pii_restore import mask_for_agents
from app.auth import Principal, Viewer
from app.models import Contact, Conversation, Message

router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=LIMITED)


def _conversation(c: Conversation, contact: Contact, is_open: bool) -> dict[str, Any]:
    return dict(
        id=c.id,
        channel=c.channel,
        mode=c.mode,
        assigned_agent=c.assigned_agent,
        contact=s.ContactOut(id=contact.id, external_id=contact.external_id, display_name=contact.display_name),
        open_escalation=is_open,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def _message(m: Message, who: Principal) -> s.MessageOut:
    """Agents and viewers read structured PII masked, as in the review console (raw only through its audited
    reveal); owners and admins, who answer for the tenant's data, read it as stored."""
    return s.MessageOut(
        id=m.id,
        direction=m.direction,
        author=m.author,
        text=m.text if who.rank in ("owner", "admin") else (mask_for_agents(m.text) or ""),
        status=m.status,
        citations=m.citations,
        in_reply_to_id=m.in_reply_to_id,
        created_at=m.created_at,
    )


@router.get(
    "/conversations",
    response_model=s.ConversationsOut,
    summary="List conversations",
    tags=["admin", "conversations"],
)
def list_conversations(
    who: Viewer,
    mode: Annotated[Literal["bot", "human"] | None, Query(description="`human`: taken over by an agent.")] = None,
    escalated: Annotated[
        bool | None, Query(description="Only those with (true) or without an open escalation.")
    ] = None,
    channel: Annotated[Channel | None, Query()] = None,
    contact: Annotated[str | None, Query(description="A contact id or the channel's id of the contact.")] = None,
    limit: Limit = 50,
    cursor: CursorQ = None,
) -> s.ConversationsOut:
    """Most recently active first. Agent keys and every login (viewers too) may call this."""

    def work(db: Session) -> s.ConversationsOut:
        rows, nxt = service.list_conversations(
            db,
            who.tenant_id,
            mode=mode,
            escalated=escalated,
            channel=channel,
            contact=contact,
            cursor=cursor,
            limit=limit,
        )
        return s.ConversationsOut(conversations=[s.ConversationOut(**_conversation(*r)) for r in rows], next_cursor=nxt)

    return in_transaction(who.tenant_id, work)


@router.get(
    "/conversations/{conversation_id}",
    response_model=s.ConversationDetail,
    summary="Get a conversation with its latest messages",
    tags=["admin", "conversations"],
)
def get_conversation(
    conversation_id: str,
    who: Viewer,
    messages: Annotated[int, Query(ge=0, le=200, description="How many of the latest messages.")] = 50,
) -> s.ConversationDetail:
    """The conversation, its contact and its latest messages (oldest first) with their citations."""

    def work(db: Session) -> s.ConversationDetail:
        row = service.get_conversation(db, who.tenant_id, conversation_id)
        latest, more = (
            service.list_messages(db, who.tenant_id, conversation_id, None, messages, newest_first=True)
            if messages
            else ([], None)
        )
        return s.ConversationDetail(
            **_conversation(*row),
            messages=[_message(m, who) for m in reversed(latest)],
            more_messages=more is not None,
        )

    return in_transaction(who.tenant_id, work)


@router.get(
    "/conversations/{conversation_id}/messages",
    response_model=s.MessagesOut,
    summary="Page through a conversation's messages",
    tags=["admin", "conversations"],
)
def list_messages(conversation_id: str, who: Viewer, limit: Limit = 100, cursor: CursorQ = None) -> s.MessagesOut:
    """Oldest first, inbound and outbound, with status and citations."""

    def work(db: Session) -> s.MessagesOut:
        rows, nxt = service.list_messages(db, who.tenant_id, conversation_id, cursor, limit)
        return s.MessagesOut(messages=[_message(m, who) for m in rows], next_cursor=nxt)

    return in_transaction(who.tenant_id, work)

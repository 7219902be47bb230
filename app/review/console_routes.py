"""The review API's routes for the console: the live queue (Server-Sent Events), a conversation's history, and
revealing masked text (audited). Same rules as app/review/routes.py: the caller's own tenant only; viewers read
(the queue, conversations) but cannot reveal PII or decide."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from app import keys
from app.api.services import Services
from app.auth import Agent, Viewer, authenticate
from app.db import session_scope
from app.review import queue
from app.review.notify import CONSOLE_KEY
from app.review.service import ReviewError

router = APIRouter(prefix="/review/v1", tags=["review queue"])


class HistoryMessage(BaseModel):
    id: str
    direction: str = Field(description="in: the customer; out: the bot or an agent")
    author: str | None
    text: str = Field(description="Masked; POST /review/v1/messages/{id}/reveal for the raw text.")
    masked: bool
    status: str
    citations: list[dict[str, Any]] | None
    created_at: datetime


class ConversationOut(BaseModel):
    id: str
    channel: str
    mode: str = Field(description="bot | human (taken over: the bot stays silent)")
    tenant_mode: str = Field(default="auto", description="The tenant's mode on this channel: auto | draft | human.")
    assigned_agent: str | None
    contact_name: str | None
    messages: list[HistoryMessage] = Field(description=f"The latest {queue.HISTORY_LIMIT}, oldest first.")


class RevealedMessage(BaseModel):
    id: str
    text: str


class RevealedEscalation(BaseModel):
    id: str
    customer_text: str
    draft: str | None


def _raise(exc: ReviewError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


@router.get("/conversations/{conversation_id}", response_model=ConversationOut,
            summary="A conversation's history (masked)")
def get_conversation(conversation_id: str, principal: Viewer) -> ConversationOut:
    """The conversation's mode and latest messages, oldest first, with PII masked."""
    with session_scope(tenant=principal.tenant_id) as session:
        try:
            view = queue.conversation_view(session, principal.tenant_id, conversation_id)
        except ReviewError as exc:
            raise _raise(exc) from exc
        messages = []
        for m in view.messages:
            shown = queue.mask(m.text) or ""
            messages.append(HistoryMessage(id=m.id, direction=m.direction, author=m.author, text=shown,
                                           masked=shown != m.text, status=m.status, citations=m.citations,
                                           created_at=m.created_at))
        c = view.conversation
        return ConversationOut(id=c.id, channel=c.channel, mode=c.mode, tenant_mode=view.tenant_mode,
                               assigned_agent=c.assigned_agent,
                               contact_name=view.contact_name, messages=messages)


@router.post("/messages/{message_id}/reveal", response_model=RevealedMessage, summary="Reveal a message's text")
def reveal_message(message_id: str, principal: Agent) -> RevealedMessage:
    """The raw text of one message, PII included. Written to the audit log as `pii.revealed` with who asked."""
    with session_scope(tenant=principal.tenant_id) as session:
        try:
            message = queue.reveal_message(session, principal, message_id)
        except ReviewError as exc:
            raise _raise(exc) from exc
        return RevealedMessage(id=message.id, text=message.text)


@router.post("/escalations/{escalation_id}/reveal", response_model=RevealedEscalation,
             summary="Reveal an escalation's customer text and draft")
def reveal_escalation(escalation_id: str, principal: Agent) -> RevealedEscalation:
    """The raw customer text and draft, PII included. Written to the audit log as `pii.revealed`."""
    with session_scope(tenant=principal.tenant_id) as session:
        try:
            escalation, text = queue.reveal_escalation(session, principal, escalation_id)
        except ReviewError as exc:
            raise _raise(exc) from exc
        return RevealedEscalation(id=escalation.id, customer_text=text, draft=escalation.draft)


# --- the live queue -----------------------------------------------------------------------------------------
# EventSource cannot send an Authorization header, and access tokens must not travel in URLs (proxies log them):
# a stream is opened with a short-lived ticket for the tenant. The stream ends after STREAM_MAX_S (so a login
# that ended stops receiving soon); the console then asks for a new ticket, which needs a valid login.
TICKET_TTL_S = 60
STREAM_MAX_S = 300.0
RESYNC_S = 15.0  # re-read the queue this often even without a wake-up (a lost one only delays) and keep proxies


class TicketOut(BaseModel):
    ticket: str
    expires_in: int = Field(description="Seconds the ticket can be used to open a stream.")


TICKET_LABEL = b"console-events:"


def _ticket_message(tenant_id: str, expires: int) -> bytes:
    return f"{tenant_id}:{expires}".encode(errors="surrogatepass")


@router.post("/events/tickets", response_model=TicketOut, status_code=201, summary="Get a ticket for the queue stream")
def open_ticket(principal: Viewer) -> TicketOut:
    """A ticket to open `GET /review/v1/events?ticket=...` from a browser's `EventSource`, valid for `expires_in`
    seconds (to connect; an open stream stays open)."""
    expires = int(time.time()) + TICKET_TTL_S
    signature = keys.sign(TICKET_LABEL, _ticket_message(principal.tenant_id, expires))
    return TicketOut(ticket=f"{principal.tenant_id}.{expires}.{signature}", expires_in=TICKET_TTL_S)


@dataclass(frozen=True)
class StreamTenant:
    tenant_id: str


def _stream_tenant(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_switchboard_tenant: Annotated[str | None, Header()] = None,
    ticket: Annotated[str | None, Query(max_length=300, description="From `POST /review/v1/events/tickets`.")] = None,
) -> StreamTenant:
    if ticket is None:
        return StreamTenant(authenticate(request, authorization, x_switchboard_tenant).tenant_id)
    tenant_id, _, rest = ticket.partition(".")
    expires, _, signature = rest.partition(".")
    valid = bool(tenant_id) and expires.isascii() and expires.isdigit() and len(expires) <= 12
    if not valid or not keys.signed(TICKET_LABEL, _ticket_message(tenant_id, int(expires)), signature):
        raise HTTPException(401, "invalid queue stream ticket: POST /review/v1/events/tickets for one")
    if int(expires) < time.time():
        raise HTTPException(401, "queue stream ticket expired: POST /review/v1/events/tickets for a new one")
    return StreamTenant(tenant_id)


def _snapshot(tenant_id: str) -> list[queue.QueueItem]:
    with session_scope(tenant=tenant_id) as session:
        return queue.open_queue(session, tenant_id)


@router.get("/events", response_class=EventSourceResponse, summary="Stream the open queue (Server-Sent Events)")
async def stream_queue(who: Annotated[StreamTenant, Depends(_stream_tenant)],
                       services: Services) -> AsyncIterator[ServerSentEvent]:
    """The tenant's open escalations, live. Authenticate with `?ticket=` (`POST .../events/tickets`) or
    `Authorization: Bearer`.

    Events: `escalation` (an open escalation, new or changed: as in the queue, texts masked), `closed`
    (`{"id"}`: decided, no longer open), `ready` (the current queue has been sent; later events are changes).
    The stream closes after a few minutes; reconnect with a new ticket and the queue is sent again.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_MAX_S
    shown: dict[str, tuple[Any, ...]] = {}
    async with services.push.subscribe(who.tenant_id, CONSOLE_KEY) as updates:
        first = True
        while True:
            items = await run_in_threadpool(_snapshot, who.tenant_id)
            current = {item.id: item for item in items}
            for item in items:
                if shown.get(item.id) != item.stamp:
                    yield ServerSentEvent(event="escalation", data=item.to_json(), id=item.id)
            for gone in [i for i in shown if i not in current]:
                yield ServerSentEvent(event="closed", data={"id": gone})
            shown = {item.id: item.stamp for item in items}
            if first:
                first = False
                yield ServerSentEvent(event="ready", data={"open": len(items)}, retry=2000)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if not await updates.wait(min(remaining, RESYNC_S)):
                yield ServerSentEvent(comment="keep-alive")

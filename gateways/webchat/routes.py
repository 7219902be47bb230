"""The web chat channel: an embeddable page and the widget API it calls.

`POST /widget/v1/{widget_id}/sessions` gives a new visitor a new contact id and a signed, expiring session token
for it, or renews the token its holder presents (gateways/webchat/sessions.py); the token authenticates that
visitor's sends and reads, so one visitor can never read another's conversation.
Sends follow the gateway pattern: verify -> normalise -> durable enqueue -> 202.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, ServerSentEvent, format_sse_event
from pydantic import BaseModel, Field
from sqlalchemy import Table, bindparam, select

from app import keys, logs, ratelimit
from app.api.services import Services
from app.bootstrap import Container
from app.config import get_settings
from app.conversations.service import InboundRequest
from app.db import session_scope
from app.keys import TokenError
from app.models import Contact, Conversation, Message, Tenant
from app.tenant_scope import same_tenant
from gateways.common import Account, load_account, load_account_async
from gateways.payloads import scoped_key
from gateways.webchat import sessions

log = logging.getLogger(__name__)
router = APIRouter(tags=["web chat widget"])
STATIC = Path(__file__).parent / "static"
CHANNEL = "webchat"


class SessionIn(BaseModel):
    token: str | None = Field(
        default=None, max_length=2000,
        description="A session token of this widget to renew (or send it as 'Authorization: Bearer <token>'); "
                    "expired ones are renewed for WIDGET_SESSION_RENEW_GRACE_S. Without one: a new visitor.",
    )
    contact_id: str | None = Field(
        default=None, max_length=200,
        description="Only with a token, and then it must be the token's contact. Contact ids are issued by the "
                    "server; one alone is refused with 403.",
    )

    model_config = {"json_schema_extra": {"examples": [{}, {"token": "eyJhbGciOiJIUzI1NiIs..."}]}}


class SessionOut(BaseModel):
    contact_id: str
    token: str = Field(description="Send as 'Authorization: Bearer <token>'; renew it here before it expires.")
    expires_at: datetime
    expires_in: int = Field(description="Seconds until the token expires.")
    renewed: bool = Field(description="True when an existing session was renewed (same contact id).")


class SendIn(BaseModel):
    text: str = Field(min_length=1, description="What the visitor wrote.")
    client_message_id: str = Field(
        min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Unique per message from this visitor; a retried send with the same id is stored once.",
    )

    model_config = {"json_schema_extra": {"examples": [{"text": "How long do returns take?",
                                                        "client_message_id": "c-1"}]}}


class SendOut(BaseModel):
    message_id: str
    conversation_id: str
    duplicate: bool


class WidgetMessage(BaseModel):
    id: str
    direction: str
    author: str | None
    text: str
    citations: list[dict] | None
    created_at: datetime
    in_reply_to_id: str | None = Field(default=None, description="For a reply: the visitor's message it answers "
                                                                  "(the `reply_to` of its drafts).")


class MessagesOut(BaseModel):
    messages: list[WidgetMessage]
    cursor: str | None


# Widgets are routed like webhooks, from gateways.common's short-lived cache of enabled accounts: a disabled
# widget stops answering within ACCOUNT_CACHE_TTL_S.
def _account(services: Container, widget_id: str) -> Account:
    return _active(widget_id, load_account(services, CHANNEL, widget_id))


async def _account_async(services: Container, widget_id: str) -> Account:
    return _active(widget_id, await load_account_async(services, CHANNEL, widget_id))


def _active(widget_id: str, account: Account | None) -> Account:
    if account is None:
        raise HTTPException(404, f"no active web chat widget {widget_id!r}")
    return account


def _bearer(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip() or None


def _visitor(widget_id: str, authorization: str | None) -> str:
    """The contact id of a valid, unexpired session token of this widget; 401 naming the fix otherwise."""
    token = _bearer(authorization)
    if token is None:
        raise HTTPException(401, f"missing session token: POST /widget/v1/{widget_id}/sessions first")
    try:
        return sessions.verify(widget_id, token).contact_id
    except TokenError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None


@router.post("/widget/v1/{widget_id}/sessions", response_model=SessionOut, status_code=201,
             summary="Start or renew a visitor session",
             responses={401: {"description": "The token to renew is invalid, or expired beyond the grace period."},
                        403: {"description": "A contact id without its token (ids cannot be chosen)."},
                        404: {"description": "No active widget with this id."}})
def open_session(
    widget_id: str, request: Request, services: Services, body: SessionIn | None = None,
    authorization: Annotated[str | None, Header()] = None,
) -> SessionOut:
    """Without a token: a new visitor, with a new contact id chosen by the server. With the visitor's token (in
    the body or as 'Authorization: Bearer'), even one expired up to WIDGET_SESSION_RENEW_GRACE_S ago: a new
    token for the same contact, so the conversation continues. Tokens last WIDGET_SESSION_TTL_S (24 h by
    default); renew before `expires_in` runs out. Keep the token: it is the visitor's only credential, and
    a contact id alone never yields one. Unknown body fields are ignored. Limited per client IP (429)."""
    ratelimit.enforce(services.rate_limiter, ratelimit.WIDGET_SESSIONS_PER_IP, ratelimit.client_ip(request))
    account = _account(services, widget_id)
    body = body or SessionIn()
    bearer = _bearer(authorization)
    if body.token and bearer and body.token != bearer:
        raise HTTPException(422, "two different tokens (body and Authorization header): send the one to renew once")
    presented = body.token or bearer
    if presented is None:
        if body.contact_id is not None:
            raise HTTPException(403, "contact ids are issued by the server: to continue a visitor's session send "
                                     "its token ('Authorization: Bearer <token>'); without one, POST {} for a "
                                     "new visitor")
        issued = sessions.issue(widget_id, account.tenant_id, sessions.new_contact_id())
        return SessionOut(contact_id=issued.contact_id, token=issued.token, expires_at=issued.expires_at,
                          expires_in=issued.expires_in, renewed=False)
    try:
        visitor = sessions.verify(widget_id, presented, renewing=True)
    except TokenError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    if visitor.tenant_id != account.tenant_id:
        raise HTTPException(401, f"invalid session token for this widget: POST /widget/v1/{widget_id}/sessions "
                                 "without a token for a new session")
    if body.contact_id is not None and body.contact_id != visitor.contact_id:
        raise HTTPException(403, "the token is for another contact: a token renews only its own contact's session")
    issued = sessions.issue(widget_id, account.tenant_id, visitor.contact_id)
    return SessionOut(contact_id=issued.contact_id, token=issued.token, expires_at=issued.expires_at,
                      expires_in=issued.expires_in, renewed=True)


@router.post("/widget/v1/{widget_id}/messages", response_model=SendOut, status_code=202,
             summary="Send a visitor message")
async def send_message(
    widget_id: str, body: SendIn, request: Request, services: Services,
    authorization: Annotated[str | None, Header()] = None,
) -> SendOut:
    """Send the visitor's message. 202 means it is stored and queued; the reply arrives on the event stream
    (`GET .../events`) or a long-poll of `GET .../messages`. Limited per client IP and per visitor: 429 says
    when to retry, and a retry with the same `client_message_id` is stored once."""
    limiter = services.rate_limiter
    await ratelimit.enforce_async(limiter, ratelimit.WIDGET_SENDS_PER_IP, ratelimit.client_ip(request))
    contact_id = _visitor(widget_id, authorization)
    await ratelimit.enforce_async(limiter, ratelimit.WIDGET_SENDS_PER_VISITOR, contact_id)
    account = await _account_async(services, widget_id)
    text = body.text.strip()
    if not text:
        raise HTTPException(422, "text is empty")
    limit = get_settings().max_message_chars
    if len(text) > limit:
        raise HTTPException(413, f"text is {len(text)} characters; the limit is {limit}")
    inbound = InboundRequest(
        tenant_id=account.tenant_id, channel=CHANNEL, contact_external_id=contact_id,
        provider_message_id=scoped_key(contact_id, body.client_message_id), text=text, channel_account_id=account.id,
    )
    # The one intake (app/intake.py), sharing one transaction and one bus round trip with the sends (and
    # webhooks) arriving meanwhile; the event loop awaits it instead of parking a thread on it.
    [accepted] = await services.intake.accept_async([inbound])
    logs.bind(tenant_id=account.tenant_id, message_id=accepted.message_id)
    log.debug("web chat message accepted%s", " (a duplicate)" if accepted.duplicate else "")
    if not accepted.duplicate:  # the visitor's open streams show it
        push = services.push
        if push.in_process:
            push.publish(account.tenant_id, contact_id)
        else:
            await run_in_threadpool(push.publish, account.tenant_id, contact_id)
    return SendOut(
        message_id=accepted.message_id, conversation_id=accepted.conversation_id, duplicate=accepted.duplicate
    )


READ_LIMIT = 200
CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
MESSAGES: Table = Message.__table__  # type: ignore[assignment]
# Every stream wakes up to read this, twice per message (the visitor's, then the reply): one statement built
# once (its compiled form is cached; building it per call cost three times the query), rows rather than ORM
# objects. Scoped to the tenant through the contact and its conversations, whose indexes lead to the visitor's
# messages (a filter on messages.tenant_id makes SQLite scan all the tenant's).
_READ = (
    select(MESSAGES.c.id, MESSAGES.c.direction, MESSAGES.c.author, MESSAGES.c.text, MESSAGES.c.citations,
           MESSAGES.c.created_at, MESSAGES.c.status, MESSAGES.c.in_reply_to_id)
    .join(CONVERSATIONS, (CONVERSATIONS.c.id == MESSAGES.c.conversation_id) & same_tenant(CONVERSATIONS, MESSAGES))
    .join(CONTACTS, CONTACTS.c.id == CONVERSATIONS.c.contact_id)
    .where(CONTACTS.c.tenant_id == bindparam("tenant_id"), CONTACTS.c.channel == CHANNEL,
           CONTACTS.c.external_id == bindparam("contact_id"), CONVERSATIONS.c.tenant_id == bindparam("tenant_id"))
    .where(MESSAGES.c.status != "failed")
    .order_by(MESSAGES.c.created_at)
    .limit(READ_LIMIT)
)
_READ_AFTER = _READ.where(MESSAGES.c.created_at > bindparam("after"))


def _messages(tenant_id: str, contact_id: str, after: datetime | None) -> MessagesOut:
    """The visitor's messages after the cursor, in order, stopping before the first reply still being
    delivered: the cursor never moves past a message the visitor has not been shown yet."""
    params = {"tenant_id": tenant_id, "contact_id": contact_id, "after": after}
    out: list[WidgetMessage] = []
    with session_scope(tenant=tenant_id) as session:
        for m in session.execute(_READ if after is None else _READ_AFTER, params):
            if m.status == "pending":
                break
            out.append(WidgetMessage(id=m.id, direction=m.direction, author=m.author, text=m.text,
                                     citations=m.citations, created_at=m.created_at,
                                     in_reply_to_id=m.in_reply_to_id))
    cursor = out[-1].created_at.isoformat() if out else after.isoformat() if after else None
    return MessagesOut(messages=out, cursor=cursor)


@router.get("/widget/v1/{widget_id}/messages", response_model=MessagesOut,
             summary="Read (or long-poll) the conversation")
async def list_messages(
    widget_id: str,
    services: Services,
    authorization: Annotated[str | None, Header()] = None,
    after: Annotated[datetime | None, Query(description="Cursor from the previous response.")] = None,
    wait: Annotated[float, Query(ge=0, le=30, description="Long-poll up to this many seconds.")] = 0,
) -> MessagesOut:
    """The visitor's conversation after `after`; with `wait`, holds the request until something new arrives
    (the fallback for clients without `GET .../events`)."""
    contact_id = _visitor(widget_id, authorization)
    account = await _account_async(services, widget_id)
    if wait == 0:
        return await run_in_threadpool(_messages, account.tenant_id, contact_id, after)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with services.push.subscribe(account.tenant_id, contact_id) as updates:
        result = await run_in_threadpool(_messages, account.tenant_id, contact_id, after)
        while not result.messages and (remaining := deadline - loop.time()) > 0:
            if await updates.wait(remaining):  # woken by a commit for this visitor; no database polling
                result = await run_in_threadpool(_messages, account.tenant_id, contact_id, after)
    return result


# Browsers' EventSource cannot send an Authorization header and the session token is long-lived, so it must
# not travel in URLs (proxies log them): a stream is opened with a short-lived ticket bound to the widget and
# the visitor. A stream ends after STREAM_MAX_S; EventSource reconnects from its last event id, and when the
# ticket has expired by then the page asks for a new one.
TICKET_TTL_S = 60
STREAM_MAX_S = 300.0


class TicketOut(BaseModel):
    ticket: str
    expires_in: int = Field(description="Seconds the ticket can be used to open a stream.")


TICKET_LABEL = b"widget-events:"  # a key of its own: no session-token signature can pass as a ticket signature


def _ticket_message(widget_id: str, contact_id: str, expires: int) -> bytes:
    return f"{widget_id}:{contact_id}:{expires}".encode(errors="surrogatepass")  # hostile input must not raise


@router.post("/widget/v1/{widget_id}/events/tickets", response_model=TicketOut, status_code=201,
             summary="Get a ticket for the event stream")
def open_ticket(widget_id: str, services: Services,
                authorization: Annotated[str | None, Header()] = None) -> TicketOut:
    """A ticket to open `GET .../events?ticket=...` from a browser's `EventSource`, valid for `expires_in`
    seconds (to connect; an open stream stays open). Clients that can send headers may skip it and open the
    stream with the session token instead."""
    contact_id = _visitor(widget_id, authorization)
    _account(services, widget_id)
    expires = int(time.time()) + TICKET_TTL_S
    signature = keys.sign(TICKET_LABEL, _ticket_message(widget_id, contact_id, expires))
    return TicketOut(ticket=f"{contact_id}.{expires}.{signature}", expires_in=TICKET_TTL_S)


@dataclass(frozen=True)
class StreamVisitor:
    tenant_id: str
    contact_id: str


async def _stream_visitor(
    widget_id: str,
    services: Services,
    authorization: Annotated[str | None, Header()] = None,
    ticket: Annotated[str | None, Query(max_length=300, description="From `POST .../events/tickets`.")] = None,
) -> StreamVisitor:
    if ticket is None:
        contact_id = _visitor(widget_id, authorization)
    else:
        head, _, signature = ticket.rpartition(".")
        contact_id, _, expires = head.rpartition(".")
        valid = bool(contact_id) and expires.isascii() and expires.isdigit() and len(expires) <= 12
        if not valid or not keys.signed(TICKET_LABEL, _ticket_message(widget_id, contact_id, int(expires)), signature):
            raise HTTPException(401, "invalid event stream ticket for this widget: POST .../events/tickets")
        if int(expires) < time.time():
            raise HTTPException(401, "event stream ticket expired: POST .../events/tickets for a new one")
    return StreamVisitor((await _account_async(services, widget_id)).tenant_id, contact_id)


# The stream's wire format is FastAPI's (`format_sse_event`, its keep-alive comment every 15 s), written here
# rather than by FastAPI's generator endpoints: those pass every event through two memory streams and a timeout
# scope per event, which was half the stream's CPU under load (py-spy: ~5 ms of the event loop per message).
SSE_PING_S = 15.0
SSE_ITEM = {"type": "object", "properties": {  # as FastAPI documents its own streams (OpenAPI 3.2's itemSchema)
    "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
    "retry": {"type": "integer", "minimum": 0}}}
SSE_DOC: dict[int | str, dict[str, Any]] = {200: {
    "description": "The conversation as Server-Sent Events (`message`, `ready`, `draft`, `withdraw`).",
    "content": {"text/event-stream": {"itemSchema": SSE_ITEM}}}}


@router.get("/widget/v1/{widget_id}/events", response_class=StreamingResponse, responses=SSE_DOC,
            summary="Stream the conversation (Server-Sent Events)")
async def stream_events(
    visitor: Annotated[StreamVisitor, Depends(_stream_visitor)],
    services: Services,
    after: Annotated[datetime | None, Query(description="Cursor: start after this message.")] = None,
    last_event_id: Annotated[datetime | None, Header(alias="Last-Event-ID",
                                                     description="Sent by EventSource when it reconnects.")] = None,
) -> StreamingResponse:
    """The visitor's conversation as Server-Sent Events, each new message the moment it is stored.

    Authenticate with `Authorization: Bearer <session token>` or `?ticket=` (`POST .../events/tickets`).
    Events: `message` (a message, as in `GET .../messages`; its `id` is the cursor to resume from), `ready`
    (sent once the backlog after the cursor has been sent and the stream is live). While the assistant's answer
    is being written: `draft` (`{"reply_to", "conversation_id", "text", "citations"}`: the reply to message
    `reply_to` so far, whole words, citation markers as the final reply will number them; each replaces the
    previous one) and `withdraw` (`{"reply_to"}`: the draft is void, the reply escalated or failed). A draft is
    never stored and has no `id`; the final reply arrives as a `message` whose `in_reply_to_id` is the draft's
    `reply_to`. The stream closes after a few minutes; reconnect with `Last-Event-ID` (EventSource does) or
    `?after=`.
    """
    events = _events(visitor, services, last_event_id or after)
    return StreamingResponse(_encoded(events), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _encoded(events: AsyncIterator[ServerSentEvent | None]) -> AsyncIterator[bytes]:
    """Each event in SSE's wire format, as FastAPI writes it; `None` (nothing for SSE_PING_S) as a keep-alive."""
    async for event in events:
        if event is None:
            yield KEEPALIVE_COMMENT
            continue
        data = event.data
        text = data.model_dump_json() if isinstance(data, BaseModel) else None if data is None else json.dumps(data)
        yield format_sse_event(data_str=text, event=event.event, id=event.id, retry=event.retry)


async def _events(visitor: StreamVisitor, services: Container,
                  cursor: datetime | None) -> AsyncIterator[ServerSentEvent | None]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_MAX_S
    async with services.push.subscribe(visitor.tenant_id, visitor.contact_id, drafts=True) as updates:
        woken, ready = True, False
        drafts: list[dict] = []
        settled: set[str] = set()  # replies whose final message was sent or whose draft was withdrawn
        while True:
            if woken:
                result = await run_in_threadpool(_messages, visitor.tenant_id, visitor.contact_id, cursor)
                for message in result.messages:
                    cursor = message.created_at
                    if message.direction == "out" and message.in_reply_to_id:
                        settled.add(message.in_reply_to_id)
                    yield ServerSentEvent(event="message", data=message, id=cursor.isoformat())
                if not ready:
                    ready = True
                    yield ServerSentEvent(event="ready", data={"cursor": cursor.isoformat() if cursor else None},
                                          retry=2000)
            for draft in drafts:  # taken before the read above: a draft of a reply it returned is stale
                if event := _draft_event(visitor, draft, settled):
                    yield event
            if woken and len(result.messages) == READ_LIMIT:
                drafts = []
                continue  # more backlog than one read returns
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            update = await updates.next(min(remaining, SSE_PING_S))
            woken, drafts = (update.changed, update.drafts) if update else (False, [])
            if update is None and remaining > SSE_PING_S:
                yield None


def _draft_event(visitor: StreamVisitor, draft: dict, settled: set[str]) -> ServerSentEvent | None:
    reply_to = draft.get("reply_to")
    if not isinstance(reply_to, str) or reply_to in settled or draft.get("tenant_id") != visitor.tenant_id:
        return None
    if draft.get("withdrawn"):
        settled.add(reply_to)
        return ServerSentEvent(event="withdraw", data={"reply_to": reply_to})
    return ServerSentEvent(event="draft", data={
        "reply_to": reply_to, "conversation_id": draft.get("conversation_id"), "text": str(draft.get("text") or ""),
        "citations": draft.get("citations") or [],
    })


@router.get("/widget/{widget_id}", response_class=HTMLResponse, include_in_schema=False)
def widget_page(widget_id: str, services: Services) -> HTMLResponse:
    account = _account(services, widget_id)
    with session_scope(tenant=account.tenant_id) as session:
        tenant = session.get_one(Tenant, account.tenant_id)
        persona = tenant.persona or {}
        title = html.escape(str(persona.get("brand") or tenant.name))
        greeting = html.escape(str(persona.get("greeting") or ""))
    page = (STATIC / "widget.html").read_text(encoding="utf-8")
    for marker, value in (("{{WIDGET_ID}}", widget_id), ("{{TITLE}}", title), ("{{GREETING}}", greeting)):
        page = page.replace(marker, value)
    return HTMLResponse(page)

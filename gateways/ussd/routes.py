"""USSD through an aggregator (Africa's Talking style): `POST /webhooks/ussd?token=...` with form fields
`sessionId, serviceCode, phoneNumber, text`. The answer is synchronous plain text: `CON <menu>` keeps the
session open, `END <text>` closes it; the whole response fits the 182-character USSD screen.

Aggregators do not sign callbacks, so each account has a secret `webhook_token` that must be in the callback
URL; without it the request is refused. The service code selects the tenant's channel account.

Each question and its answer are recorded like any channel's: an inbound message in the customer's (phone
number's) conversation and the bot's reply, `sent` since it went back in the response, with an audit event. An
aggregator's retry of the same step gets the stored reply again; a step that fails after its question was
stored ends `dead` with the reason, never left for the orchestrator to answer on a closed session.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from app.crypto import secrets_equal
from app.db import session_scope
from app.models import Conversation, Message, Tenant, utcnow
from gateways.common import Account, require_account, secret, webhook_refused

if TYPE_CHECKING:
    from app.assistant.prompts import Draft

CHANNEL = "ussd"
MAX_CHARS = 182
router = APIRouter(prefix="/webhooks/ussd", tags=["ussd"])
log = logging.getLogger(__name__)


def fit(prefix: str, text: str, limit: int = MAX_CHARS) -> str:
    """`prefix + text` cut at a word boundary to `limit` characters, with an ellipsis when cut."""
    text = " ".join(text.split())
    room = limit - len(prefix)
    if len(text) > room:
        cut = text[: room - 1]
        cut = cut.rsplit(" ", 1)[0] if " " in cut else cut
        text = cut.rstrip(" ,;:") + "…"
    return prefix + text


def menu(account: Account) -> str:
    prompt = account.config.get("prompt") or "Welcome! Type your question:"
    return fit("CON ", str(prompt))


def answer(account: Account, session_id: str, phone: str, step: int, question: str) -> str:
    """The `END` screen's text for one question: from the tenant's live pack version with the offline grounded
    composer (fast, no LLM round trip), recorded as the conversation's next exchange."""
    from app.assistant.composer import compose_offline
    from app.assistant.orchestrator import mark_dead
    from app.conversations.service import InboundRequest, store_inbound
    from app.knowledge.retrieval import retrieve  # loads the retrieval stack only where USSD is served

    [stored] = store_inbound([InboundRequest(
        tenant_id=account.tenant_id, channel=CHANNEL, contact_external_id=phone,
        provider_message_id=f"{session_id}:{step}", text=question, channel_account_id=account.id,
    )], enqueue=False)  # answered right here, not by the orchestrator
    message_id = stored.accepted.message_id
    try:
        earlier = _stored_reply(account.tenant_id, message_id)
        if earlier is not None:  # the aggregator retried this step
            return earlier
        persona, policies, live = _tenant(account.tenant_id)
        # The live pack version only, as the orchestrator reads it: never a build in progress or a retired one.
        passages = [] if live is None else retrieve(account.tenant_id, question, top_k=3,
                                                    filters={"pack_version": live})
        threshold = float(policies.get("min_relevance", 0.45))
        draft = compose_offline(question, passages, persona, min_relevance=threshold)
        screen = fit("END ", draft.text)[len("END "):]
        _record(account.tenant_id, message_id, screen, draft, live)
        return screen
    except Exception as exc:
        mark_dead(account.tenant_id, message_id, f"ussd_answer_failed: {type(exc).__name__}: {exc}")
        raise


def _tenant(tenant_id: str) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    with session_scope() as session:
        tenant = session.get_one(Tenant, tenant_id)
        return dict(tenant.persona or {}), dict(tenant.policies or {}), tenant.live_pack_version


def _reply_key(message_id: str) -> str:
    return f"reply:{message_id}"


def _stored_reply(tenant_id: str, message_id: str) -> str | None:
    with session_scope() as session:
        return session.scalar(select(Message.text).where(
            Message.tenant_id == tenant_id, Message.channel == CHANNEL,
            Message.provider_message_id == _reply_key(message_id),
        ))


def _record(tenant_id: str, message_id: str, screen: str, draft: Draft, live: int | None) -> None:
    from app.audit import record
    from app.conversations.service import add_outbound

    with session_scope() as session:
        message = session.scalars(
            select(Message).where(Message.tenant_id == tenant_id, Message.id == message_id)
        ).one()
        conversation = session.get_one(Conversation, message.conversation_id)
        reply, created = add_outbound(
            session, conversation, key=_reply_key(message_id), text=screen, author="bot",
            in_reply_to_id=message_id, citations=draft.citations,
            meta={"pack_version": live, "confidence": draft.confidence},
        )
        if not created:
            return
        reply.status = "sent"  # it is the HTTP response itself
        message.status, message.processed_at = "answered", utcnow()
        record(session, tenant_id, "bot", "message.answered", "message", message_id, {
            "reply_id": reply.id, "pack_version": live, "chunk_ids": [c["chunk_id"] for c in draft.citations],
            **({"no_knowledge": True} if draft.escalate else {}),
        })


@router.post("", response_class=PlainTextResponse)
async def session_step(
    token: Annotated[str, Query(description="The account's webhook token.")],
    sessionId: Annotated[str, Form()],
    serviceCode: Annotated[str, Form()],
    phoneNumber: Annotated[str, Form()],
    text: Annotated[str, Form()] = "",
) -> PlainTextResponse:
    """One USSD session step. An empty `text` opens the menu; otherwise the last `*`-separated input is the
    question and the answer ends the session."""
    account = await run_in_threadpool(require_account, CHANNEL, serviceCode)
    if not secrets_equal(token, secret(account, "webhook_token")):
        raise await run_in_threadpool(
            webhook_refused, account, HTTPException(403, "wrong webhook token for this USSD service code")
        )
    inputs = text.split("*") if text else []
    question = inputs[-1].strip() if inputs else ""
    if not question:
        return PlainTextResponse(menu(account))
    try:
        reply = await run_in_threadpool(answer, account, sessionId, phoneNumber, len(inputs), question)
    except Exception:
        # The customer is on a live session screen: say something useful rather than drop the session.
        log.exception("USSD answer failed for session %s on %s", sessionId, serviceCode)
        reply = str(account.config.get("fallback") or "Sorry, we cannot answer right now. Please try again later.")
    log.info("USSD session %s from %s answered", sessionId, phoneNumber[-4:])
    return PlainTextResponse(fit("END ", reply))

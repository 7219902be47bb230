"""USSD through an aggregator (Africa's Talking style): `POST /webhooks/ussd?token=...` with form fields
`sessionId, serviceCode, phoneNumber, text`. The answer is synchronous plain text: `CON <menu>` keeps the
session open, `END <text>` closes it; the whole response fits the 182-character USSD screen.

Aggregators do not sign callbacks, so each account has a secret `webhook_token` that must be in the callback
URL; without it the request is refused. The service code selects the tenant's channel account.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from gateways.common import Account, require_account, secret

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


def answer(account: Account, question: str) -> str:
    """Answer from the tenant's knowledge with the offline grounded composer (fast, no LLM round trip)."""
    from app.assistant.composer import compose_offline
    from app.db import session_scope
    from app.knowledge.retrieval import retrieve
    from app.models import Tenant

    with session_scope() as session:
        tenant = session.get_one(Tenant, account.tenant_id)
        persona, policies, live = dict(tenant.persona or {}), dict(tenant.policies or {}), tenant.live_pack_version
    # The live pack version only, as the orchestrator reads it: never a build in progress or a retired one.
    passages = [] if live is None else retrieve(account.tenant_id, question, top_k=3, filters={"pack_version": live})
    draft = compose_offline(question, passages, persona, min_relevance=float(policies.get("min_relevance", 0.45)))
    return draft.text


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
    if not hmac.compare_digest(secret(account, "webhook_token").encode(), token.encode()):
        raise HTTPException(403, "wrong webhook token for this USSD service code")
    question = text.split("*")[-1].strip() if text else ""
    if not question:
        return PlainTextResponse(menu(account))
    try:
        reply = await run_in_threadpool(answer, account, question)
    except Exception:
        # The customer is on a live session screen: say something useful rather than drop the session.
        log.exception("USSD answer failed for session %s on %s", sessionId, serviceCode)
        reply = str(account.config.get("fallback") or "Sorry, we cannot answer right now. Please try again later.")
    log.info("USSD session %s from %s answered", sessionId, phoneNumber[-4:])
    return PlainTextResponse(fit("END ", reply))

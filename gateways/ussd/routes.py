"""USSD through an aggregator (Africa's Talking style): `POST /webhooks/ussd?token=...` with form fields
`sessionId, serviceCode, phoneNumber, text`. The answer is synchronous plain text: `CON <menu>` keeps the
session open, `END <text>` closes it; the whole response fits the 182-character USSD screen.

Aggregators do not sign callbacks, so each account has a secret `webhook_token` that must be in the callback
URL; without it the request is refused. The service code selects the tenant's channel account.

A question goes through the one intake (app/intake.py) like any channel's, and the orchestrator decides its
answer (guardrails included); this route waits for that decision, at most the account's `answer_wait_s`. An
answer in time is shown and recorded `sent` (`meta.shown_on = "ussd_screen"`); an aggregator's retry of the
step shows it again. Otherwise the screen says only what will happen: with an SMS (twilio) account the reply
or the team's answer follows by SMS (`gateways/ussd/send.py`), without one nothing is promised. An escalation is
a real one, in the review queue.

With numbered menus in the tenant's policies (`ussd_menu`, see app/ussd_menu.py) the session walks them: `CON`
for a menu, `END` for an answer, `0` back, and the "ask" option's next input is the question, answered as above.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from app.api.services import services_of
from app.bootstrap import Container
from app.conversations.service import InboundRequest
from app.crypto import secrets_equal
from app.db import session_scope
from app.intake import Outcome
from app.models import Message, Tenant, utcnow
from app.ussd_menu import MAX_CHARS, walk
from gateways.common import Account, accounts_of, require_account, secret, webhook_refused

CHANNEL = "ussd"
SHOWN_ON = "ussd_screen"
DEFAULT_WAIT_S = 4.0  # aggregators close a step after ~5-10 s
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


def tenant_menu(tenant_id: str) -> dict[str, Any] | None:
    """The account's tenant's `ussd_menu` policy, if it has one."""
    with session_scope(tenant=tenant_id) as session:
        policies = session.scalar(select(Tenant.policies).where(Tenant.id == tenant_id)) or {}
    return policies.get("ussd_menu") or None


def answer_wait_s(account: Account) -> float:
    return float(account.config.get("answer_wait_s") or DEFAULT_WAIT_S)


def sms_account(services: Container, tenant_id: str) -> Account | None:
    """The tenant's SMS account (twilio) that answers a USSD question the screen could not."""
    return next((a for a in accounts_of(services, "twilio", max_age_s=5.0) if a.tenant_id == tenant_id), None)


async def answer(services: Container, account: Account, session_id: str, phone: str, step: int,
                 question: str) -> str:
    """The `END` screen's text for one question: the orchestrator's answer if it comes in time (the route is
    woken through the push hub when it is committed, see `Intake.await_outcome`), else what will happen."""
    intake = services.intake
    [accepted] = await intake.accept_async([InboundRequest(
        tenant_id=account.tenant_id, channel=CHANNEL, contact_external_id=phone,
        provider_message_id=f"{session_id}:{step}", text=question, channel_account_id=account.id,
    )])
    outcome = await intake.await_outcome(account.tenant_id, accepted.message_id, timeout_s=answer_wait_s(account))
    if outcome.kind == "answered":
        shown = await run_in_threadpool(_show, account.tenant_id, outcome)
        if shown is not None:
            return shown
    return await run_in_threadpool(_not_shown, services, account, outcome)


def _not_shown(services: Container, account: Account, outcome: Outcome) -> str:
    """What the screen says when no answer is shown on it."""
    by_sms = sms_account(services, account.tenant_id) is not None
    if outcome.kind == "escalated":
        return ("Thanks. Our team has your question and will answer by SMS." if by_sms
                else "Thanks. Our team has your question.")
    if by_sms:
        return "Thanks. We will send the answer by SMS."
    return str(account.config.get("fallback") or "Sorry, we cannot answer right now. Please try again later.")


def _show(tenant_id: str, outcome: Outcome) -> str | None:
    """Claim the answer for the screen: recorded `sent` on it, unless the SMS sender already took it (then
    None). An aggregator's retry of the step gets the screen shown before."""
    with session_scope(tenant=tenant_id) as session:
        reply = session.scalars(select(Message).where(Message.tenant_id == tenant_id, Message.id == outcome.reply_id)
                                .with_for_update()).first()
        if reply is None:
            return None
        meta = dict(reply.meta or {})
        if reply.status == "pending" and not meta.get("provider_ids"):
            reply.status, reply.processed_at = "sent", utcnow()
            reply.meta = {**meta, "shown_on": SHOWN_ON}
        elif meta.get("shown_on") != SHOWN_ON:
            return None
        return fit("END ", reply.text)[len("END "):]


@router.post("", response_class=PlainTextResponse)
async def session_step(
    request: Request,
    token: Annotated[str, Query(description="The account's webhook token.")],
    sessionId: Annotated[str, Form()],
    serviceCode: Annotated[str, Form()],
    phoneNumber: Annotated[str, Form()],
    text: Annotated[str, Form()] = "",
) -> PlainTextResponse:
    """One USSD session step. `text` is the session's inputs so far, `*`-separated. With the tenant's numbered
    menus they are walked (`CON` menu, `END` answer, `0` back; the "ask" option takes a question). Without, an
    empty `text` opens the prompt and the last input is the question. A question's answer ends the session."""
    services = services_of(request)
    account = await run_in_threadpool(require_account, services, CHANNEL, serviceCode)
    if not secrets_equal(token, secret(account, "webhook_token")):
        raise await run_in_threadpool(
            webhook_refused, services, account, HTTPException(403, "wrong webhook token for this USSD service code")
        )
    inputs = text.split("*") if text else []
    question = inputs[-1].strip() if inputs else ""
    if (numbered := await run_in_threadpool(tenant_menu, account.tenant_id)) is not None:
        screen = walk(numbered, inputs)
        if screen.kind != "question":
            # Line breaks kept (unlike `fit`); the saved menu was checked to fit the screen.
            return PlainTextResponse((("CON " if screen.kind == "menu" else "END ") + screen.text)[:MAX_CHARS])
        question = screen.text
    elif not question:
        return PlainTextResponse(menu(account))
    try:
        reply = await answer(services, account, sessionId, phoneNumber, len(inputs), question)
    except Exception:
        # The customer is on a live session screen: say something useful rather than drop the session.
        log.exception("USSD answer failed for session %s on %s", sessionId, serviceCode)
        reply = str(account.config.get("fallback") or "Sorry, we cannot answer right now. Please try again later.")
    log.info("USSD session %s from %s answered", sessionId, phoneNumber[-4:])
    return PlainTextResponse(fit("END ", reply))

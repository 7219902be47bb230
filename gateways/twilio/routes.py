"""Twilio Messaging webhooks: `POST /webhooks/twilio` for incoming messages and status callbacks (SMS and
WhatsApp). Every request must carry a valid `X-Twilio-Signature` for the number's account auth token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api.services import services_of
from app.config import get_settings
from gateways.common import ingest_async, log, require_account, secret, webhook_refused
from gateways.twilio.parse import account_number, parse_form
from gateways.twilio.verify import signature_valid

CHANNEL = "twilio"
router = APIRouter(prefix="/webhooks/twilio", tags=["twilio"])


def public_url(request: Request) -> str:
    """The URL Twilio called, as the public base URL spells it (the proxy in front changes scheme and host)."""
    base = get_settings().public_base_url.rstrip("/")
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{base}{request.url.path}{query}"


@router.post("")
async def webhook(
    request: Request, x_twilio_signature: Annotated[str | None, Header()] = None
) -> Response:
    """An incoming message or a status callback. 200 (an empty TwiML document, so Twilio sends nothing
    itself) means it is stored and queued; the `X-Switchboard-Outcome` header counts what was done."""
    if not x_twilio_signature:
        raise HTTPException(401, "missing X-Twilio-Signature header")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, "expected an application/x-www-form-urlencoded Twilio callback")
    form = await request.form()
    pairs = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    fields = {k: v for k, v in pairs}
    number = account_number(fields)
    if not number:
        raise HTTPException(400, "callback names no To/From number to route by")
    services = services_of(request)
    account = await run_in_threadpool(require_account, services, CHANNEL, number)
    if not signature_valid(secret(account, "auth_token"), public_url(request), pairs, x_twilio_signature):
        log.warning("twilio webhook for %s with a bad signature (signed URL %s): refused", number,
                    public_url(request))
        raise await run_in_threadpool(webhook_refused, services, account, HTTPException(
            403, "X-Twilio-Signature does not match; check SWITCHBOARD_PUBLIC_BASE_URL is the URL configured in Twilio"
        ))
    outcome = await ingest_async(services, account, parse_form(fields))
    summary = ",".join(f"{k}={v}" for k, v in outcome.as_dict().items())
    return Response(EMPTY_TWIML, media_type="text/xml", headers={"X-Switchboard-Outcome": summary})


EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

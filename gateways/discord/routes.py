"""Discord interactions endpoint: `POST /webhooks/discord/{application_id}` (the application's
"Interactions Endpoint URL"). PING is answered with PONG; slash commands, components and modals are stored
and queued, and answered with a deferred response that the outbound sender completes as a follow-up."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from app.api.services import services_of
from gateways.common import Inbound, Parsed, ingest_async, log, require_account, webhook_refused
from gateways.discord.verify import MAX_SKEW_S, signature_valid, timestamp_fresh
from gateways.payloads import Malformed, as_id, json_object, reading

CHANNEL = "discord"
PING, COMMAND, COMPONENT, AUTOCOMPLETE, MODAL = 1, 2, 3, 4, 5
PONG, DEFERRED_MESSAGE, AUTOCOMPLETE_RESULT = 1, 5, 8
router = APIRouter(prefix="/webhooks/discord", tags=["discord"])


def parse_interaction(body: dict[str, Any]) -> Parsed:
    """A command, component or modal submission -> one message; `Malformed` when it cannot be read."""
    parsed = Parsed()
    kind_no = body.get("type")
    if kind_no not in (COMMAND, COMPONENT, MODAL):
        raise Malformed(f"unknown interaction type {kind_no!r}")
    user = (body.get("member") or {}).get("user") or body.get("user") or {}
    data = body.get("data") or {}
    interaction_id, user_id = as_id(body.get("id")), as_id(user.get("id"))
    if interaction_id is None or user_id is None:
        raise Malformed("an interaction without id or user id")
    if kind_no == COMMAND:
        values = [str(o.get("value")) for o in data.get("options") or [] if o.get("value") is not None]
        text, kind = " ".join(values) or f"/{data.get('name', '')}", "command"
    elif kind_no == COMPONENT:
        text, kind = " ".join(data.get("values") or []) or str(data.get("custom_id") or ""), "interactive"
    else:
        fields = [c for row in data.get("components") or [] for c in row.get("components") or []]
        text, kind = " ".join(str(c.get("value") or "") for c in fields), "interactive"
    parsed.messages.append(Inbound(
        provider_message_id=interaction_id, contact_id=user_id, kind=kind, text=text,
        display_name=user.get("global_name") or user.get("username"),
        meta={"interaction_token": body.get("token"), "channel_id": body.get("channel_id"),
              "command": data.get("name"), "custom_id": data.get("custom_id")},
    ))
    return parsed


@router.post("/{application_id}")
async def interaction(
    application_id: str,
    request: Request,
    x_signature_ed25519: Annotated[str | None, Header()] = None,
    x_signature_timestamp: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """A signed interaction, timestamped within 5 minutes of now. Discord requires an answer within 3 seconds:
    PONG, an empty autocomplete result, or a deferred reply. One that cannot be read gets 400 and is
    dead-lettered with the reason (Discord does not redeliver interactions)."""
    if not x_signature_ed25519 or not x_signature_timestamp:
        raise HTTPException(401, "missing X-Signature-Ed25519 / X-Signature-Timestamp headers")
    services = services_of(request)
    account = await run_in_threadpool(require_account, services, CHANNEL, application_id)
    raw = await request.body()
    public_key = str(account.config.get("public_key") or "")
    if not signature_valid(public_key, x_signature_timestamp, raw, x_signature_ed25519):
        log.warning("discord interaction for %s with a bad signature: refused", application_id)
        raise await run_in_threadpool(webhook_refused, services, account,
                                      HTTPException(401, "invalid request signature"))
    if not timestamp_fresh(x_signature_timestamp, time.time()):
        log.warning("discord interaction for %s with a stale X-Signature-Timestamp: refused", application_id)
        raise await run_in_threadpool(webhook_refused, services, account, HTTPException(
            401, f"X-Signature-Timestamp is more than {MAX_SKEW_S // 60} minutes away from now (a replay, or a "
                 "server clock that is off)"))
    parsed = Parsed()
    with reading(parsed.dead, "the interaction", raw):
        body = json_object(raw, "an interaction object")
        if body.get("type") == PING:
            return {"type": PONG}
        if body.get("type") == AUTOCOMPLETE:  # we offer no suggestions; the user types the option themselves
            return {"type": AUTOCOMPLETE_RESULT, "data": {"choices": []}}
        parsed = parse_interaction(body)
    await ingest_async(services, account, parsed)
    if parsed.dead:
        raise HTTPException(400, f"the interaction cannot be read: {parsed.dead[0].reason}")
    return {"type": DEFERRED_MESSAGE}

"""Discord interactions endpoint: `POST /webhooks/discord/{application_id}` (the application's
"Interactions Endpoint URL"). PING is answered with PONG; slash commands, components and modals are stored
and queued, and answered with a deferred response that the outbound sender completes as a follow-up."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from gateways.common import Inbound, Parsed, ingest, log, require_account, webhook_refused
from gateways.discord.verify import signature_valid

CHANNEL = "discord"
PING, COMMAND, COMPONENT, AUTOCOMPLETE, MODAL = 1, 2, 3, 4, 5
PONG, DEFERRED_MESSAGE = 1, 5
router = APIRouter(prefix="/webhooks/discord", tags=["discord"])


def parse_interaction(body: dict[str, Any]) -> Parsed:
    parsed = Parsed()
    kind_no = body.get("type")
    user = (body.get("member") or {}).get("user") or body.get("user") or {}
    data = body.get("data") or {}
    if not body.get("id") or not user.get("id") or kind_no not in (COMMAND, COMPONENT, MODAL):
        parsed.skipped.append(f"interaction type {kind_no!r}")
        return parsed
    if kind_no == COMMAND:
        values = [str(o.get("value")) for o in data.get("options") or [] if o.get("value") is not None]
        text, kind = " ".join(values) or f"/{data.get('name', '')}", "command"
    elif kind_no == COMPONENT:
        text, kind = " ".join(data.get("values") or []) or str(data.get("custom_id") or ""), "interactive"
    else:
        fields = [c for row in data.get("components") or [] for c in row.get("components") or []]
        text, kind = " ".join(str(c.get("value") or "") for c in fields), "interactive"
    parsed.messages.append(Inbound(
        provider_message_id=str(body["id"]), contact_id=str(user["id"]), kind=kind, text=text,
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
    """A signed interaction. Discord requires an answer within 3 seconds: it gets PONG or a deferred reply."""
    if not x_signature_ed25519 or not x_signature_timestamp:
        raise HTTPException(401, "missing X-Signature-Ed25519 / X-Signature-Timestamp headers")
    account = await run_in_threadpool(require_account, CHANNEL, application_id)
    raw = await request.body()
    public_key = str(account.config.get("public_key") or "")
    if not signature_valid(public_key, x_signature_timestamp, raw, x_signature_ed25519):
        log.warning("discord interaction for %s with a bad signature: refused", application_id)
        raise await run_in_threadpool(webhook_refused, account, HTTPException(401, "invalid request signature"))
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise HTTPException(400, "expected an interaction object")
    if body.get("type") == PING:
        return {"type": PONG}
    await run_in_threadpool(ingest, account, parse_interaction(body))
    return {"type": DEFERRED_MESSAGE}

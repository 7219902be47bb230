"""WhatsApp Cloud API webhooks: `GET/POST /webhooks/whatsapp` (one URL per Meta app; the phone number id in
each change selects the tenant's channel account)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from gateways.meta.webhook import handshake, receive
from gateways.whatsapp.parse import split_by_account

CHANNEL = "whatsapp"
router = APIRouter(prefix="/webhooks/whatsapp", tags=["whatsapp"])


@router.get("", response_class=PlainTextResponse)
def verify_subscription(request: Request) -> PlainTextResponse:
    """Meta's subscription handshake: echoes `hub.challenge` when `hub.verify_token` matches an account's."""
    return handshake(CHANNEL, request)


@router.post("")
async def webhook(request: Request) -> dict[str, Any]:
    """Signed (X-Hub-Signature-256) notifications. 200 means every message in the body is stored and queued."""
    return await receive(CHANNEL, request, {"whatsapp_business_account"}, split_by_account)

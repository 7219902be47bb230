"""Instagram messaging webhooks: `GET/POST /webhooks/instagram`. The Instagram account id (`entry[].id`)
selects the tenant's channel account. Messenger (`object: page`) bodies use the same envelope and are accepted."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from gateways.instagram.parse import OBJECTS, split_by_account
from gateways.meta.webhook import handshake, receive

CHANNEL = "instagram"
router = APIRouter(prefix="/webhooks/instagram", tags=["instagram"])


@router.get("", response_class=PlainTextResponse)
def verify_subscription(request: Request) -> PlainTextResponse:
    """Meta's subscription handshake: echoes `hub.challenge` when `hub.verify_token` matches an account's."""
    return handshake(CHANNEL, request)


@router.post("")
async def webhook(request: Request) -> dict[str, Any]:
    """Signed (X-Hub-Signature-256) notifications. 200 means every message in the body is stored and queued."""
    return await receive(CHANNEL, request, OBJECTS, split_by_account)

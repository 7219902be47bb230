"""Telegram webhooks: `POST /webhooks/telegram/{bot_id}`, registered with `setWebhook(url, secret_token=...)`.

Telegram signs nothing; it echoes the `secret_token` given to setWebhook in `X-Telegram-Bot-Api-Secret-Token`.
A missing or different token is refused with 403, before anything is read.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from app.api.services import services_of
from app.crypto import secrets_equal
from gateways.common import ingest_async, log, require_account, secret, webhook_refused
from gateways.telegram.parse import parse_body

CHANNEL = "telegram"
router = APIRouter(prefix="/webhooks/telegram", tags=["telegram"])


def token_valid(configured: str, header: str | None) -> bool:
    return secrets_equal(header, configured)


@router.post("/{bot_id}")
async def webhook(
    bot_id: str,
    request: Request,
    x_telegram_bot_api_secret_token: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """One Telegram `Update`. 200 means it is stored and queued, acknowledged and skipped, or (an Update that
    cannot be read) dead-lettered with the reason."""
    services = services_of(request)
    account = await run_in_threadpool(require_account, services, CHANNEL, bot_id)
    if not token_valid(secret(account, "secret_token"), x_telegram_bot_api_secret_token):
        log.warning("telegram webhook for bot %s with a missing or wrong secret token: refused", bot_id)
        raise await run_in_threadpool(
            webhook_refused, services, account, HTTPException(403, "missing or wrong X-Telegram-Bot-Api-Secret-Token")
        )
    raw = await request.body()
    outcome = await ingest_async(services, account, parse_body(raw))
    return outcome.as_dict()

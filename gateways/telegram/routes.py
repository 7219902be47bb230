"""Telegram webhooks: `POST /webhooks/telegram/{bot_id}`, registered with `setWebhook(url, secret_token=...)`.

Telegram signs nothing; it echoes the `secret_token` given to setWebhook in `X-Telegram-Bot-Api-Secret-Token`.
A missing or different token is refused with 403, before anything is read.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from gateways.common import ingest, log, require_account, secret, webhook_refused
from gateways.telegram.parse import parse_update

CHANNEL = "telegram"
router = APIRouter(prefix="/webhooks/telegram", tags=["telegram"])


def token_valid(configured: str, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(configured.encode(), (header or "").encode())


@router.post("/{bot_id}")
async def webhook(
    bot_id: str,
    request: Request,
    x_telegram_bot_api_secret_token: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """One Telegram `Update`. 200 means it is stored and queued (or acknowledged and skipped)."""
    account = await run_in_threadpool(require_account, CHANNEL, bot_id)
    if not token_valid(secret(account, "secret_token"), x_telegram_bot_api_secret_token):
        log.warning("telegram webhook for bot %s with a missing or wrong secret token: refused", bot_id)
        raise await run_in_threadpool(
            webhook_refused, account, HTTPException(403, "missing or wrong X-Telegram-Bot-Api-Secret-Token")
        )
    raw = await request.body()
    try:
        update = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(update, dict) or "update_id" not in update:
        raise HTTPException(400, "expected a Telegram Update object with an update_id")
    outcome = await run_in_threadpool(ingest, account, parse_update(update))
    return outcome.as_dict()

"""Telegram outbound through python-telegram-bot's `Bot`, built per call with the tenant's token and a
configurable Bot API base URL. Text is split to 4096 characters; sends are spaced to 1 message/s per chat
and 30/s per bot."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session
from telegram import Bot
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import HTTPXRequest

from app.models import ChannelAccount, Message
from gateways.base import SendError
from gateways.common import (
    LIMITS,
    AuthFailed,
    Limit,
    Permanent,
    ProviderError,
    RateLimited,
    RateLimiter,
    Transient,
    credentials,
    get_rate_limiter,
    recipient,
    require_account_row,
    send_parts,
    split_text,
    with_retries,
)

DEFAULT_BASE = "https://api.telegram.org"


def default_base_url() -> str:
    return os.environ.get("SWITCHBOARD_TELEGRAM_BASE_URL", DEFAULT_BASE)


def typed(exc: TelegramError) -> ProviderError:
    if isinstance(exc, RetryAfter):
        wait = exc.retry_after
        return RateLimited(str(exc), wait.total_seconds() if isinstance(wait, timedelta) else float(wait))
    if isinstance(exc, (InvalidToken, Forbidden)):
        return AuthFailed(f"Telegram refused: {exc}")
    if isinstance(exc, (TimedOut, NetworkError)) and not isinstance(exc, BadRequest):
        return Transient(f"Telegram unreachable: {exc}")
    return Permanent(f"Telegram refused the message: {exc}")


class TelegramSender:
    def __init__(self, base_url: str | None = None, limiter: RateLimiter | None = None, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url
        self.limiter = limiter
        self.timeout = timeout
        self.sleep = sleep

    def send(self, session: Session, account: ChannelAccount | None, message: Message) -> str | None:
        account = require_account_row(account, message)
        token = credentials(account).get("bot_token")
        if not token:
            raise SendError(f"Telegram bot {account.external_id} has no bot_token", permanent=True)
        chat_id = recipient(session, message).external_id
        base = (self.base_url or account.config.get("api_base_url") or default_base_url()).rstrip("/")
        limiter = self.limiter or get_rate_limiter()
        limits = [Limit(f"telegram:chat:{account.external_id}:{chat_id}", 1.0),
                  Limit(f"telegram:bot:{account.external_id}", 1 / 30)]

        def send_one(_: int, part: str) -> str:
            def call() -> str:
                limiter.acquire(limits)
                return asyncio.run(self._send(base, str(token), chat_id, part))
            return with_retries(call, sleep=self.sleep)

        return send_parts(session, message, split_text(message.text, LIMITS["telegram"]), send_one)

    async def _send(self, base: str, token: str, chat_id: str, text: str) -> str:
        request = HTTPXRequest(connection_pool_size=1, read_timeout=self.timeout, write_timeout=self.timeout,
                               connect_timeout=self.timeout)
        bot = Bot(token, base_url=f"{base}/bot", request=request)
        try:
            sent = await bot.send_message(chat_id=chat_id, text=text)
        except TelegramError as exc:
            raise typed(exc) from exc
        finally:
            await request.shutdown()
        return f"{chat_id}:{sent.message_id}"

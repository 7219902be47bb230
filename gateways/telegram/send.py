"""Telegram outbound through python-telegram-bot's `Bot`, built per call with the tenant's token and a
configurable Bot API base URL. Text is split to 4096 characters; sends are spaced to 1 message/s per chat
and 30/s per bot."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

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
    log,
    recipient,
    replied_inbound,
    require_account_row,
    send_parts,
    split_text,
    with_retries,
)

DEFAULT_BASE = "https://api.telegram.org"
T = TypeVar("T")


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
        bot_limit = Limit(f"telegram:bot:{account.external_id}", 1 / 30)
        limits = [Limit(f"telegram:chat:{account.external_id}:{chat_id}", 1.0), bot_limit]
        self._answer_callback(session, message, base, str(token), limiter, bot_limit)

        def send_one(_: int, part: str) -> str:
            def call() -> str:
                limiter.acquire(limits)
                sent = asyncio.run(self._call(base, str(token), lambda bot: bot.send_message(chat_id, part)))
                return f"{chat_id}:{sent.message_id}"
            return with_retries(call, sleep=self.sleep)

        return send_parts(session, message, split_text(message.text, LIMITS["telegram"]), send_one)

    def _answer_callback(self, session: Session, message: Message, base: str, token: str, limiter: RateLimiter,
                         bot_limit: Limit) -> None:
        """Stop the spinner Telegram shows on a pressed inline button until the bot answers the callback
        query. Once per reply; a failure (the query expired, Telegram unreachable) never holds the reply back."""
        inbound = replied_inbound(session, message, "callback_query_id")
        if inbound is None or (message.meta or {}).get("callback_answered"):
            return
        query_id = str(inbound.meta["callback_query_id"])

        def call() -> str:
            limiter.acquire([bot_limit])
            asyncio.run(self._call(base, token, lambda bot: bot.answer_callback_query(query_id)))
            return query_id
        try:
            with_retries(call, sleep=self.sleep)
        except ProviderError as exc:
            log.info("callback query %s not answered (%s); sending the reply anyway", query_id, exc)
        # Committed with the first part, so a redelivered reply does not answer it again.
        message.meta = {**(message.meta or {}), "callback_answered": query_id}

    async def _call(self, base: str, token: str, method: Callable[[Bot], Awaitable[T]]) -> T:
        """One Bot API call with a `Bot` built for this tenant (no client outlives the call)."""
        request = HTTPXRequest(connection_pool_size=1, read_timeout=self.timeout, write_timeout=self.timeout,
                               connect_timeout=self.timeout)
        try:
            return await method(Bot(token, base_url=f"{base}/bot", request=request))
        except TelegramError as exc:
            raise typed(exc) from exc
        finally:
            await request.shutdown()

"""Telegram outbound through python-telegram-bot's `Bot`, built per call with the tenant's token and a
configurable Bot API base URL. Text is split to 4096 characters; sends are spaced to 1 message/s per chat
and 30/s per bot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.orm import Session
from telegram import Bot
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import HTTPXRequest

from app.models import ChannelAccount, Message
from app.netguard import async_guarded_transport, blocked_reason
from gateways.outbound import (
    AuthFailed,
    Limit,
    Permanent,
    Plan,
    ProviderError,
    ProviderSender,
    RateLimited,
    Transient,
    log,
    recipient,
    replied_inbound,
)

T = TypeVar("T")


def typed(exc: TelegramError) -> ProviderError:
    if isinstance(exc, RetryAfter):
        wait = exc.retry_after
        return RateLimited(str(exc), wait.total_seconds() if isinstance(wait, timedelta) else float(wait))
    if isinstance(exc, (InvalidToken, Forbidden)):
        return AuthFailed(f"Telegram refused: {exc}")
    if isinstance(exc, (TimedOut, NetworkError)) and not isinstance(exc, BadRequest):
        return Transient(f"Telegram unreachable: {exc}")
    return Permanent(f"Telegram refused the message: {exc}")


class TelegramSender(ProviderSender):
    channel, label, required = "telegram", "Telegram bot", ("bot_token",)
    base_env, base_default = "SWITCHBOARD_TELEGRAM_BASE_URL", "https://api.telegram.org"

    def plan(self, session: Session, account: ChannelAccount, creds: dict[str, Any], message: Message) -> Plan:
        chat_id = recipient(session, message).external_id
        base, token = self.api_base(account), str(creds["bot_token"])
        guarded = self.guarded(account)
        bot_limit = Limit(f"telegram:bot:{account.external_id}", 1 / 30)
        self._answer_callback(session, message, base, token, bot_limit, guarded)

        def send(_: int, part: str) -> str:
            sent = asyncio.run(self._call(base, token, lambda bot: bot.send_message(chat_id, part), guarded))
            return f"{chat_id}:{sent.message_id}"

        return Plan(self.text_parts(message), send,
                    [Limit(f"telegram:chat:{account.external_id}:{chat_id}", 1.0), bot_limit])

    def _answer_callback(self, session: Session, message: Message, base: str, token: str, bot_limit: Limit,
                         guarded: bool) -> None:
        """Stop the spinner Telegram shows on a pressed inline button until the bot answers the callback
        query. Once per reply; a failure (the query expired, Telegram unreachable) never holds the reply back."""
        inbound = replied_inbound(session, message, "callback_query_id")
        if inbound is None or (message.meta or {}).get("callback_answered"):
            return
        query_id = str(inbound.meta["callback_query_id"])
        limiter = self.rate_limiter()

        def call() -> str:
            limiter.acquire([bot_limit])
            asyncio.run(self._call(base, token, lambda bot: bot.answer_callback_query(query_id), guarded))
            return query_id
        try:
            self.retrying(call)
        except ProviderError as exc:
            log.info("callback query %s not answered (%s); sending the reply anyway", query_id, exc)
        # Committed with the first part, so a redelivered reply does not answer it again.
        message.meta = {**(message.meta or {}), "callback_answered": query_id}

    async def _call(self, base: str, token: str, method: Callable[[Bot], Awaitable[T]], guarded: bool = False) -> T:
        """One Bot API call with a `Bot` built for this tenant (no client outlives the call); `guarded`: `base` is
        the tenant's own `api_base_url` (a self-hosted Bot API server), reached through the outbound URL policy."""
        request = HTTPXRequest(connection_pool_size=1, read_timeout=self.timeout, write_timeout=self.timeout,
                               connect_timeout=self.timeout,
                               httpx_kwargs={"transport": async_guarded_transport()} if guarded else None)
        try:
            return await method(Bot(token, base_url=f"{base}/bot", request=request))
        except TelegramError as exc:
            if blocked := blocked_reason(exc):
                raise Permanent(f"Telegram: {blocked}") from exc
            raise typed(exc) from exc
        finally:
            await request.shutdown()

"""Telegram outbound through python-telegram-bot's `Bot`, built per call with the tenant's token and a
configurable Bot API base URL, on one event loop the sender keeps for its lifetime (no new loop per message).
Text is split to 4096 characters; sends are spaced to 1 message/s per chat and 30/s per bot."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from telegram import Bot
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import HTTPXRequest

from app.channels import AuthFailed, Permanent, RateLimited, SendError, SendRequest, Transient
from app.netguard import async_guarded_transport, blocked_reason
from gateways.outbound import Limit, Plan, ProviderSender, RateLimiter, log

T = TypeVar("T")


def typed(exc: TelegramError) -> SendError:
    if isinstance(exc, RetryAfter):
        wait = exc.retry_after
        return RateLimited(str(exc), wait.total_seconds() if isinstance(wait, timedelta) else float(wait))
    if isinstance(exc, (InvalidToken, Forbidden)):
        return AuthFailed(f"Telegram refused: {exc}")
    if isinstance(exc, (TimedOut, NetworkError)) and not isinstance(exc, BadRequest):
        return Transient(f"Telegram unreachable: {exc}")
    return Permanent(f"Telegram refused the message: {exc}")


class _Loop:
    """One event loop in a daemon thread, started on first use: the sender's coroutines run there."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="sb-telegram", daemon=True).start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


class TelegramSender(ProviderSender):
    channel, label, required = "telegram", "Telegram bot", ("bot_token",)
    base_env, base_default = "SWITCHBOARD_TELEGRAM_BASE_URL", "https://api.telegram.org"

    def __init__(self, limiter: RateLimiter | None = None, base_url: str | None = None, timeout: float = 10.0) -> None:
        super().__init__(limiter, base_url, timeout)
        self._loop = _Loop()

    def close(self) -> None:
        self._loop.close()

    def plan(self, request: SendRequest) -> Plan:
        account = request.account
        chat_id = request.recipient
        base, token = self.api_base(account), str(account.credentials["bot_token"])
        guarded = self.guarded(account)
        bot_limit = Limit(f"telegram:bot:{account.external_id}", 1 / 30)
        if not request.sent:  # answered with the first part: a resumed reply does not answer it again
            self._answer_callback(request, base, token, bot_limit, guarded)

        def send(_: int, part: str) -> str:
            sent = self._loop.run(self._call(base, token, lambda bot: bot.send_message(chat_id, part), guarded))
            return f"{chat_id}:{sent.message_id}"

        return Plan(self.text_parts(request), send,
                    [Limit(f"telegram:chat:{account.external_id}:{chat_id}", 1.0), bot_limit])

    def _answer_callback(self, request: SendRequest, base: str, token: str, bot_limit: Limit, guarded: bool) -> None:
        """Stop the spinner Telegram shows on a pressed inline button until the bot answers the callback
        query. Once per reply; a failure (the query expired, Telegram unreachable) never holds the reply back."""
        query_id = (request.answers.meta.get("callback_query_id") if request.answers else None)
        if not query_id:
            return
        self.limiter.acquire([bot_limit])
        try:
            self._loop.run(self._call(base, token, lambda bot: bot.answer_callback_query(str(query_id)), guarded))
        except SendError as exc:
            log.info("callback query %s not answered (%s); sending the reply anyway", query_id, exc)

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

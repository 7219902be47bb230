"""What the provider senders share: typed provider errors, one JSON request helper, rate limits, message
splitting, idempotent multi-part sends, and `ProviderSender`, the skeleton every provider's sender fills in."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.crypto import decrypt_json
from app.models import ChannelAccount, Contact, Conversation, Message
from app.netguard import blocked_reason, guarded_transport
from gateways.base import SendError

log = logging.getLogger("gateways")

# ---------------------------------------------------------------------------------------------------------------
# Outbound: typed provider errors


class ProviderError(Exception):
    """A provider call failed. Subclasses say what the dispatcher should do about it."""

    def to_send_error(self) -> SendError:
        return SendError(str(self))


class RateLimited(ProviderError):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def to_send_error(self) -> SendError:
        return SendError(str(self), retry_after=self.retry_after)


class Transient(ProviderError):
    """5xx, timeouts, connection errors: retry with back-off."""


class Permanent(ProviderError):
    """The provider refused this message (bad recipient, policy, payload): retrying cannot help."""

    def to_send_error(self) -> SendError:
        return SendError(str(self), permanent=True)


class AuthFailed(Permanent):
    """The tenant's credentials are wrong or revoked: stop and tell the operator."""


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def classify_http(provider: str, status: int, body: str, retry_after: str | None = None) -> ProviderError:
    """Map an HTTP failure onto the error hierarchy."""
    detail = f"{provider} answered HTTP {status}: {body[:300]}"
    if status == 429:
        return RateLimited(detail, parse_retry_after(retry_after))
    if status in (401, 403):
        return AuthFailed(detail)
    if status >= 500 or status == 408:
        return Transient(detail)
    return Permanent(detail)


def http_json(
    provider: str,
    method: str,
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    retry_after: Callable[[httpx.Response], str | None] | None = None,
    guarded: bool = False,
) -> dict[str, Any]:
    """One JSON request to a provider's HTTP API (a fresh client per call: no tenant state is kept), failures
    typed. `retry_after` reads the wait from a 429 when the provider puts it somewhere other than the header.
    `guarded`: the URL is the tenant's own (`api_base_url`), reached through the outbound URL policy."""
    try:
        with httpx.Client(timeout=timeout, transport=guarded_transport() if guarded else None) as client:
            response = client.request(method, url, json=payload, headers=headers)
    except httpx.TimeoutException as exc:
        raise Transient(f"{provider} timed out: {exc}") from exc
    except httpx.HTTPError as exc:
        if blocked := blocked_reason(exc):
            raise Permanent(f"{provider}: {blocked}") from exc
        raise Transient(f"{provider} unreachable: {exc}") from exc
    if response.status_code >= 400:
        wait = retry_after(response) if retry_after else response.headers.get("Retry-After")
        raise classify_http(provider, response.status_code, response.text, wait)
    return response.json() if response.content else {}


# ---------------------------------------------------------------------------------------------------------------
# Outbound: rate limits


@dataclass(frozen=True)
class Limit:
    """At most one send per `interval` seconds under `key` (e.g. "telegram:chat:<bot>:<chat>")."""

    key: str
    interval: float


class RateLimiter:
    """Spaces sends so each key sees at most one send per interval (a GCRA with no burst).

    `reserve` books the earliest slot allowed by every key and returns how long to wait for it; `acquire`
    waits. In-process state by default; `RedisRateLimiter` shares it between processes. The clock and
    sleep are injectable so tests can check spacing without timing anything.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, limits: Sequence[Limit]) -> float:
        with self._lock:
            now = self.clock()
            start = max([now, *(self._next.get(lim.key, now) for lim in limits)])
            for lim in limits:
                self._next[lim.key] = start + lim.interval
            return start - now

    def acquire(self, limits: Sequence[Limit]) -> float:
        wait = self.reserve(limits)
        if wait > 0:
            self.sleep(wait)
        return wait


_GCRA = """
local now = tonumber(ARGV[1])
local start = now
for i, key in ipairs(KEYS) do
  local nxt = tonumber(redis.call('GET', key) or '0')
  if nxt > start then start = nxt end
end
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[i + 1])
  redis.call('SET', key, tostring(start + interval), 'PX', math.ceil(interval * 1000) + 1000)
end
return tostring(start - now)
"""


class RedisRateLimiter(RateLimiter):
    """The same booking, atomically in Redis (a Lua script), so every sender replica shares one budget.
    Uses Redis server time so replicas with skewed clocks agree."""

    def __init__(self, url: str, prefix: str = "sb:ratelimit", sleep: Callable[[float], None] = time.sleep) -> None:
        import redis

        super().__init__(sleep=sleep)
        self._redis = redis.Redis.from_url(url)
        self._script = self._redis.register_script(_GCRA)
        self.prefix = prefix

    def reserve(self, limits: Sequence[Limit]) -> float:
        seconds, micros = self._redis.time()
        now = seconds + micros / 1e6
        keys = [f"{self.prefix}:{lim.key}" for lim in limits]
        wait = self._script(keys=keys, args=[now, *(lim.interval for lim in limits)])
        return float(wait)


_limiter: RateLimiter | None = None
_limiter_lock = threading.Lock()


def get_rate_limiter() -> RateLimiter:
    global _limiter
    with _limiter_lock:
        if _limiter is None:
            url = get_settings().redis_url
            _limiter = RedisRateLimiter(url) if url else RateLimiter()
        return _limiter


def set_rate_limiter(limiter: RateLimiter | None) -> None:
    """For tests (an injected clock) and for resetting after a settings change."""
    global _limiter
    with _limiter_lock:
        _limiter = limiter


# ---------------------------------------------------------------------------------------------------------------
# Outbound: splitting and idempotent multi-part sends

LIMITS = {"whatsapp": 4096, "telegram": 4096, "twilio": 1600, "instagram": 1000, "discord": 2000}
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")


def split_text(text: str, limit: int) -> list[str]:
    """Split into parts of at most `limit` characters, at paragraph/sentence ends where possible, else at
    word boundaries, and only inside a word when one word is longer than the limit."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    current = ""
    for piece in _pieces(text, limit):
        candidate = f"{current} {piece}" if current else piece
        if len(candidate) <= limit:
            current = candidate
        else:
            parts.append(current)
            current = piece
    if current:
        parts.append(current)
    return parts


def _pieces(text: str, limit: int) -> Iterable[str]:
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        if len(sentence) <= limit:
            yield sentence
            continue
        for word in sentence.split():
            while len(word) > limit:
                yield word[:limit]
                word = word[limit:]
            if word:
                yield word


DONE_STATUSES = frozenset({"sent", "delivered", "read"})


def send_parts(
    session: Session, message: Message, parts: Sequence[Any], send_one: Callable[[int, Any], str]
) -> str | None:
    """Send `parts` in order, recording each provider id on the message (committed) before the next part.

    A retry after a crash or a transient error resumes after the last recorded part, so no part is sent
    twice. A message already `sent` sends nothing. Returns the first part's provider id, the one delivery
    receipts are matched against.
    """
    if message.status in DONE_STATUSES:
        return (message.meta or {}).get("provider_id")
    ids: list[str] = list((message.meta or {}).get("provider_ids") or [])
    for index, part in enumerate(parts):
        if index < len(ids):
            continue
        try:
            provider_id = send_one(index, part)
        except ProviderError as exc:
            raise exc.to_send_error() from exc
        ids.append(provider_id)
        message.meta = {**(message.meta or {}), "provider_ids": list(ids), "provider_id": ids[0]}
        message.provider_ref = ids[0]
        # Commit now: if the next part fails, the retry must know this one went out.
        session.commit()
    return ids[0] if ids else None


def recipient(session: Session, message: Message) -> Contact:
    conversation = session.get_one(Conversation, message.conversation_id)
    return session.get_one(Contact, conversation.contact_id)


def replied_inbound(session: Session, message: Message, key: str) -> Message | None:
    """The inbound message an outbound one answers, if its meta holds `key` (a provider handle such as an
    interaction token): the message it replies to, else the conversation's latest inbound message."""
    inbound = session.get(Message, message.in_reply_to_id) if message.in_reply_to_id else None
    if inbound is None or inbound.conversation_id != message.conversation_id:
        inbound = session.scalars(
            select(Message)
            .where(Message.conversation_id == message.conversation_id, Message.direction == "in")
            .order_by(Message.created_at.desc())
            .limit(1)
        ).first()
    return inbound if inbound is not None and (inbound.meta or {}).get(key) else None


def require_account_row(account: ChannelAccount | None, message: Message) -> ChannelAccount:
    if account is None:
        raise SendError(f"message {message.id} has no channel account to send from", permanent=True)
    return account


def credentials(account: ChannelAccount) -> dict[str, Any]:
    return decrypt_json(account.credentials_encrypted) if account.credentials_encrypted else {}


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def with_retries(
    call: Callable[[], str],
    *,
    attempts: int = 3,
    max_inline_wait: float = 5.0,
    base_delay: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Retry one provider call in place on rate limits (honouring Retry-After) and transient errors (doubling
    back-off), as long as the wait is short. Longer waits and the last failure propagate, so the dispatcher's
    redelivery takes over instead of holding a worker."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (RateLimited, Transient) as exc:
            wait = exc.retry_after if isinstance(exc, RateLimited) and exc.retry_after is not None \
                else base_delay * 2 ** (attempt - 1)
            if attempt == attempts or wait > max_inline_wait:
                raise
            log.info("provider call failed (%s); retrying in %.2fs", exc, wait)
            sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------------
# The sender skeleton


@dataclass
class Plan:
    """How one outbound message goes out: its parts in order, one attempt at sending one part (returns the
    provider's id for it, raises a `ProviderError`), and the rate limits every attempt waits for."""

    parts: Sequence[Any]
    send: Callable[[int, Any], str]
    limits: Sequence[Limit]


class ProviderSender:
    """A `Sender` for a provider API. The skeleton is the same for every provider: check the account and its
    credentials, plan the parts, then send each part once (`send_parts`), every attempt spaced by the rate
    limiter and retried in place on short rate limits and transient errors (`with_retries`). A subclass says
    what is specific to its provider in `plan`.

    Senders hold no tenant state (one instance serves every tenant); the constructor's arguments are for
    tests and tools: an API base URL, a limiter with an injected clock, the HTTP timeout, the sleep."""

    channel: ClassVar[str]
    label: ClassVar[str]  # how errors name the account: "Telegram bot 123"
    required: ClassVar[tuple[str, ...]] = ()  # credentials no send can do without
    base_env: ClassVar[str]  # the environment variable that overrides the provider's API base URL
    base_default: ClassVar[str]

    def __init__(self, base_url: str | None = None, limiter: RateLimiter | None = None, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url
        self.limiter = limiter
        self.timeout = timeout
        self.sleep = sleep

    def send(self, session: Session, account: ChannelAccount | None, message: Message) -> str | None:
        account = require_account_row(account, message)
        creds = credentials(account)
        missing = [name for name in self.required if not creds.get(name)]
        if missing:
            raise SendError(f"{self.label} {account.external_id} has no {' or '.join(missing)}", permanent=True)
        plan = self.plan(session, account, creds, message)
        limiter = self.rate_limiter()

        def send_one(index: int, part: Any) -> str:
            def attempt() -> str:
                limiter.acquire(plan.limits)
                return plan.send(index, part)
            return self.retrying(attempt)

        return send_parts(session, message, plan.parts, send_one)

    def plan(self, session: Session, account: ChannelAccount, creds: dict[str, Any], message: Message) -> Plan:
        """Raise `SendError(permanent=True)` for a message this provider must not or cannot take."""
        raise NotImplementedError

    def guarded(self, account: ChannelAccount) -> bool:
        """True when `api_base` is the tenant's own setting: then only public addresses may be reached."""
        return not self.base_url and bool((account.config or {}).get("api_base_url"))

    def api_base(self, account: ChannelAccount) -> str:
        """The constructor's base URL, else the account's `config["api_base_url"]`, else the environment's."""
        base = self.base_url or (account.config or {}).get("api_base_url") or os.environ.get(
            self.base_env, self.base_default)
        return str(base).rstrip("/")

    def rate_limiter(self) -> RateLimiter:
        return self.limiter or get_rate_limiter()

    def retrying(self, call: Callable[[], str]) -> str:
        return with_retries(call, sleep=self.sleep)

    def text_parts(self, message: Message) -> list[str]:
        return split_text(message.text, LIMITS[self.channel])

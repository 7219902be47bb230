"""What the provider senders share: one JSON request helper mapping failures onto the core's send errors, rate
limits, message splitting, and `ProviderSender`, the skeleton every provider's sender fills in."""

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

from app import tracing
from app.channels import Account, AuthFailed, Permanent, RateLimited, SendError, SendRequest, Transient
from app.netguard import blocked_reason, guarded_transport

log = logging.getLogger("gateways")

# ---------------------------------------------------------------------------------------------------------------
# Outbound: typed provider errors (the core's one hierarchy, app/channels.py)

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


def classify_http(provider: str, status: int, body: str, retry_after: str | None = None) -> SendError:
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


def build_rate_limiter(redis_url: str | None) -> RateLimiter:
    """The process's send spacing (built once, by the container: gateways/plugin.py)."""
    return RedisRateLimiter(redis_url) if redis_url else RateLimiter()


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


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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
    """A `Sender` for a provider API. The skeleton is the same for every provider: check the account's
    credentials, plan the parts, then send each part not yet sent, every attempt spaced by the rate limiter, and
    `record` each part's provider id as it goes. A failure propagates as a `SendError`: the dispatcher schedules
    the retry (honouring `retry_after`), nothing is retried or slept here. A subclass says what is specific to
    its provider in `plan`.

    Senders hold no tenant state (one instance serves every tenant); the constructor's arguments are for
    the container and tests: the shared rate limiter, an API base URL, the HTTP timeout."""

    channel: ClassVar[str]
    label: ClassVar[str]  # how errors name the account: "Telegram bot 123"
    required: ClassVar[tuple[str, ...]] = ()  # credentials no send can do without
    base_env: ClassVar[str]  # the environment variable that overrides the provider's API base URL
    base_default: ClassVar[str]
    in_process = False

    def __init__(self, limiter: RateLimiter | None = None, base_url: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.limiter = limiter or RateLimiter()
        self.timeout = timeout

    def send(self, request: SendRequest, record: Callable[[str], None]) -> list[str]:
        account = request.account
        missing = [name for name in self.required if not account.credentials.get(name)]
        if missing:
            raise Permanent(f"{self.label} {account.external_id} has no {' or '.join(missing)}")
        plan = self.plan(request)
        ids = list(request.sent)
        for index, part in enumerate(plan.parts):
            if index < len(ids):
                continue  # went out before a crash or a failed later part: never twice
            with tracing.span(f"{self.channel} send part", {"switchboard.channel": self.channel,
                                                             "switchboard.part.index": index,
                                                             "switchboard.parts": len(plan.parts)},
                              kind=tracing.SpanKind.CLIENT):
                self.limiter.acquire(plan.limits)
                provider_id = plan.send(index, part)
            ids.append(provider_id)
            record(provider_id)
        return ids

    def plan(self, request: SendRequest) -> Plan:
        """Raise `Permanent` for a message this provider must not or cannot take."""
        raise NotImplementedError

    def guarded(self, account: Account) -> bool:
        """True when `api_base` is the tenant's own setting: then only public addresses may be reached."""
        return not self.base_url and bool(account.config.get("api_base_url"))

    def api_base(self, account: Account) -> str:
        """The constructor's base URL, else the account's `config["api_base_url"]`, else the environment's."""
        base = self.base_url or account.config.get("api_base_url") or os.environ.get(self.base_env, self.base_default)
        return str(base).rstrip("/")

    def text_parts(self, request: SendRequest) -> list[str]:
        return split_text(request.text, LIMITS[self.channel])

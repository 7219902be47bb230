"""Rate limits: named rules on the `limits` library's moving windows, kept in Redis in scale-out (so every replica
counts together) and in process memory when embedded.

A rule names what is counted ("widget sends per visitor"); its limit comes from settings ("20/minute", empty
turns it off). `hit` spends one unit and raises `RateLimited` when the window is full; `check` only looks, for
limits that count failures (a request is refused while its IP's failure window is full, and only a failure
spends). Identities (IPs, visitor ids, key hashes) are stored hashed, so the limit store holds no PII or keys.

If the store cannot be reached the limiter lets requests through and logs it: limits protect the service, they
must not take it down with Redis.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from limits import RateLimitItem, RateLimitItemPerMinute, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    name: str  # the key prefix in the store
    what: str  # for the 429 message: "at most <n> <what> per <period>"
    setting: str = ""  # the Settings field holding its limit, when not `name`

    @property
    def setting_name(self) -> str:
        return self.setting or self.name


WIDGET_SESSIONS_PER_IP = Rule("rate_widget_sessions_per_ip", "new widget sessions per IP address")
WIDGET_SENDS_PER_IP = Rule("rate_widget_sends_per_ip", "widget messages per IP address")
WIDGET_SENDS_PER_VISITOR = Rule("rate_widget_sends_per_visitor", "messages per visitor")
AUTH_FAILURES_PER_IP = Rule("rate_auth_failures_per_ip", "failed API key attempts per IP address")
AUTH_FAILURES_PER_KEY = Rule("rate_auth_failures_per_key", "failed attempts with this API key")
WEBHOOK_FAILURES_PER_ACCOUNT = Rule(
    "rate_webhook_failures_per_account", "webhooks with a wrong signature or secret for this channel account"
)
# Meta names the account only inside the body, which is not read before its signature matches: failures are
# counted per endpoint (channel) there, under the same setting.
WEBHOOK_FAILURES_PER_ENDPOINT = Rule(
    "rate_webhook_failures_per_endpoint", "webhooks signed by none of this endpoint's accounts",
    setting="rate_webhook_failures_per_account",
)
LLM_CALLS_PER_TENANT = Rule("rate_llm_calls_per_tenant", "LLM calls per tenant")
LOGIN_FAILURES_PER_ACCOUNT = Rule("rate_login_failures_per_account", "failed logins for this account")
LOGIN_FAILURES_PER_IP = Rule("rate_login_failures_per_ip", "failed logins per IP address")
# Per tenant, with the figure from the tenant's plan (app/tenants/plans.py), not from settings.
TENANT_MESSAGES = Rule("plan_messages_per_tenant", "messages handled per tenant (the plan's messages_per_minute)")
TENANT_ADMIN_REQUESTS = Rule("plan_admin_requests_per_tenant",
                             "admin API requests per tenant (the plan's admin_requests_per_minute)")
RULES = (WIDGET_SESSIONS_PER_IP, WIDGET_SENDS_PER_IP, WIDGET_SENDS_PER_VISITOR, AUTH_FAILURES_PER_IP,
         AUTH_FAILURES_PER_KEY, WEBHOOK_FAILURES_PER_ACCOUNT, WEBHOOK_FAILURES_PER_ENDPOINT, LLM_CALLS_PER_TENANT,
         LOGIN_FAILURES_PER_ACCOUNT, LOGIN_FAILURES_PER_IP)


class RateLimited(Exception):
    """A rule's window is full; `retry_after` is the whole seconds until one unit frees up."""

    def __init__(self, rule: Rule, limit: RateLimitItem, retry_after: int) -> None:
        self.rule, self.limit = rule, limit
        self.retry_after = retry_after
        per = f"{limit.multiples} {limit.GRANULARITY.name}s" if limit.multiples > 1 else limit.GRANULARITY.name
        self.detail = (f"rate limit reached: at most {limit.amount} {rule.what} per {per}; "
                       f"retry in {retry_after} s")
        super().__init__(self.detail)

    def __reduce__(self) -> tuple[type[RateLimited], tuple[Rule, RateLimitItem, int]]:
        # Raised in `serve` for an answering process's call (app/answerers.py), it crosses as its parts.
        return type(self), (self.rule, self.limit, self.retry_after)

    def http(self) -> HTTPException:
        """The 429 answer: the message says which limit and when to retry, `Retry-After` says when too."""
        return HTTPException(429, detail=self.detail, headers={"Retry-After": str(self.retry_after)})


class RateLimiter:
    """Moving-window limits per rule and identity. Thread-safe; one per process (`Container.rate_limiter`)."""

    def __init__(self, limits: Mapping[Rule, str], storage_uri: str = "memory://", key_prefix: str = "sb:_rl") -> None:
        self._limits = {rule: parse(spec) for rule, spec in limits.items() if spec and spec.strip()}
        options: dict[str, float | str | bool] = (
            {"key_prefix": key_prefix, "socket_timeout": 2} if storage_uri.startswith("redis") else {}
        )
        self._storage = storage_from_string(storage_uri, wrap_exceptions=True, **options)
        self.in_process = storage_uri.startswith("memory")  # no round trip: fine to call on an event loop
        self._windows = MovingWindowRateLimiter(self._storage)
        self._warned_at = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            {rule: str(getattr(settings, rule.setting_name)) for rule in RULES},
            storage_uri=settings.redis_url or "memory://",
            key_prefix=f"{settings.bus_namespace}:_rl",  # under the bus's bookkeeping prefix: no stream is named so
        )

    def limits(self, rule: Rule) -> bool:
        """Whether `rule` has a limit (an empty setting turns it off)."""
        return rule in self._limits

    def hit(self, rule: Rule, identity: str) -> None:
        """Spend one unit of `rule` for `identity`; raises `RateLimited` (spending nothing) when the window is full."""
        self._apply(rule, identity, self._windows.hit)

    def hit_per_minute(self, rule: Rule, identity: str, per_minute: int | None) -> None:
        """`hit` with a limit the caller holds (a tenant's plan figure) instead of a setting; None: unlimited."""
        if per_minute is not None:
            self._apply(rule, identity, self._windows.hit, _per_minute(per_minute))

    def check(self, rule: Rule, identity: str) -> None:
        """Raise `RateLimited` when `identity`'s window for `rule` is already full; spends nothing."""
        self._apply(rule, identity, self._windows.test)

    def _apply(self, rule: Rule, identity: str, allowed: Callable[[RateLimitItem, str], bool],
               limit: RateLimitItem | None = None) -> None:
        limit = limit if limit is not None else self._limits.get(rule)
        if limit is None:
            return
        key = _key(rule, identity)
        try:
            if allowed(limit, key):
                return
            refused = self._refusal(rule, limit, key)
        except StorageError as exc:
            self._store_down(exc)
            return
        raise refused

    def _refusal(self, rule: Rule, limit: RateLimitItem, key: str) -> RateLimited:
        reset_at = self._windows.get_window_stats(limit, key).reset_time
        return RateLimited(rule, limit, max(1, math.ceil(reset_at - time.time())))

    def _store_down(self, exc: StorageError) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:  # once a minute, not once a request
            self._warned_at = now
            log.warning("rate limit store unavailable (%s): requests are not being limited", exc.storage_error)

    def close(self) -> None:
        connection = getattr(self._storage, "storage", None)
        if connection is not None and hasattr(connection, "close"):
            connection.close()


def enforce(limiter: RateLimiter, rule: Rule, identity: str) -> None:
    """Spend one unit of `rule` for `identity`; over the limit, raise the 429."""
    try:
        limiter.hit(rule, identity)
    except RateLimited as exc:
        raise exc.http() from None


async def enforce_async(limiter: RateLimiter, rule: Rule, identity: str) -> None:
    """`enforce` for async routes: on the event loop when the windows are in process memory (microseconds), in a
    worker thread when they are in Redis, so a slow store never holds every other request."""
    if limiter.in_process or not limiter.limits(rule):
        enforce(limiter, rule, identity)
    else:
        await run_in_threadpool(enforce, limiter, rule, identity)


@functools.lru_cache(maxsize=256)
def _per_minute(count: int) -> RateLimitItem:
    return RateLimitItemPerMinute(count)


def _key(rule: Rule, identity: str) -> str:
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{rule.name}:{digest}"


def client_ip(request: Request) -> str:
    """The ASGI client address (uvicorn has already applied X-Forwarded-For from `trusted_proxies`). IPv6
    clients are counted per /64, the block one subscriber gets, so rotating addresses inside it does not help."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)

"""The quota gate: is this tenant still within its plan? Asked once per message, before the LLM would be called,
and by the admin API's request limit.

Cheap on the hot path: each process keeps, per tenant, the plan and the month's usage read from the rows
(app/tenants/usage.py) at most every QUOTA_CACHE_S seconds, and counts the messages it let through since. The
trade-off, chosen on purpose: between two reads, other replicas' messages and the tokens of calls in flight are
not seen, so a tenant can go a few messages (at most about replicas x messages per QUOTA_CACHE_S) or one answer's
tokens past an allowance. It is never the other way round: a message is never refused because of a count it
cannot see, and a message over the allowance is never dropped: the orchestrator applies the tenant's
`over_quota` choice (escalate with reason `quota_exceeded`, or answer with the offline composer).

The message count for the gate is of inbound messages already handled (not `received`), plus this process's own
since the read: a burst stored before any of it is answered is admitted in order, up to the allowance, instead of
counting the whole burst against its own first message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from app.db import session_scope
from app.models import Tenant, utcnow
from app.ratelimit import TENANT_ADMIN_REQUESTS, TENANT_MESSAGES, RateLimited, RateLimiter
from app.tenants import usage
from app.tenants.plans import Plan, effective


@dataclass
class _Seen:
    plan: Plan
    period: usage.Period
    handled: int  # inbound messages handled this month, at the read
    tokens: int  # LLM tokens this month, at the read
    read_at: float
    since: int = 0  # messages this process let through after the read
    lock: threading.Lock = field(default_factory=threading.Lock)


class QuotaGate:
    def __init__(self, limiter: RateLimiter, *, default_plan: str, cache_s: float,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = utcnow) -> None:
        self.limiter = limiter
        self.default_plan = default_plan
        self.cache_s = cache_s
        self._clock = clock
        self._now = now
        self._seen: dict[str, _Seen] = {}
        self._refreshing: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._forgets = 0  # bumped by `forget`: a read begun before one may hold the old plan, and is not stored

    def plan(self, tenant_id: str) -> Plan:
        return self._state(tenant_id).plan

    def check_message(self, tenant_id: str) -> str | None:
        """None when the tenant may have this message answered as usual; else which limit it is past (for the
        escalation's detail). Counts the message as let through when it is."""
        seen = self._state(tenant_id)
        plan = seen.plan
        with seen.lock:  # check and count as one step: concurrent handlers of one tenant never both take the last
            if plan.messages_per_month is not None and seen.handled + seen.since >= plan.messages_per_month:
                return (f"the {plan.name} plan's {plan.messages_per_month} messages for {seen.period.label} are "
                        f"used")
            if plan.llm_tokens_per_month is not None and seen.tokens >= plan.llm_tokens_per_month:
                return (f"the {plan.name} plan's {plan.llm_tokens_per_month} LLM tokens for {seen.period.label} "
                        f"are used")
            seen.since += 1
        try:
            self.limiter.hit_per_minute(TENANT_MESSAGES, tenant_id, plan.messages_per_minute)
        except RateLimited as exc:
            with seen.lock:
                seen.since -= 1  # not let through after all
            return f"the {plan.name} plan's {exc.detail}"
        return None

    def check_admin_request(self, tenant_id: str) -> None:
        """Spend one of the tenant's admin API requests; raises `RateLimited` (its `http()` is the 429)."""
        self.limiter.hit_per_minute(TENANT_ADMIN_REQUESTS, tenant_id, self.plan(tenant_id).admin_requests_per_minute)

    def forget(self, tenant_id: str | None = None) -> None:
        """Drop what this process read (a plan changed here; tests)."""
        with self._lock:
            self._forgets += 1
            if tenant_id is None:
                self._seen.clear()
            else:
                self._seen.pop(tenant_id, None)

    def _state(self, tenant_id: str) -> _Seen:
        seen = self._seen.get(tenant_id)
        if seen is not None and self._fresh(seen):
            return seen
        with self._lock:
            refreshing = self._refreshing.setdefault(tenant_id, threading.Lock())
        with refreshing:  # one read per tenant at a time: concurrent handlers then share one count
            while True:
                seen = self._seen.get(tenant_id)
                if seen is not None and self._fresh(seen):
                    return seen
                with self._lock:
                    forgets = self._forgets
                seen = self._read(tenant_id, self._clock())
                with self._lock:
                    if self._forgets == forgets:  # else a plan changed during the read: read it again
                        self._seen[tenant_id] = seen
                        return seen

    def _fresh(self, seen: _Seen) -> bool:
        return self._clock() - seen.read_at < self.cache_s and self._now() < seen.period.end

    def _read(self, tenant_id: str, read_at: float) -> _Seen:
        period = usage.Period.month_of(self._now())
        with session_scope(tenant=tenant_id) as session:
            row = session.execute(select(Tenant.plan, Tenant.plan_overrides).where(Tenant.id == tenant_id)).first()
            name, overrides = (row.plan, row.plan_overrides) if row is not None else (None, None)
            plan = effective(name, overrides, self.default_plan)
            unlimited = plan.messages_per_month is None and plan.llm_tokens_per_month is None
            handled = 0 if unlimited else usage.inbound_messages(session, tenant_id, period, handled_only=True)
            tokens = 0 if plan.llm_tokens_per_month is None else usage.llm_tokens(session, tenant_id, period)
        return _Seen(plan=plan, period=period, handled=handled, tokens=tokens, read_at=read_at)

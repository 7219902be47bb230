"""The quota gate on its own (real database, real limiter): it admits a tenant's messages in order up to the
allowance even when they are handled concurrently, counts handled rows (not a burst still waiting) at each read,
starts again with a new month, and never counts another tenant's rows."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app import operations
from app.bootstrap import container
from app.db import migrate, session_scope
from app.models import Message
from app.ratelimit import RateLimiter
from app.tenants.quota import QuotaGate
from tests.factories import get_or_create_contact, get_or_create_conversation


@pytest.fixture
def tenants(sb_home: Path) -> tuple[str, str, str]:
    """Two tenants: (conversation of A, id of A, id of B)."""
    from app.tenants.service import create_tenant

    migrate()
    ids = []
    with session_scope(cross_tenant="tests") as session:
        for prefix in ("alpha", "beta"):
            ids.append(create_tenant(session, f"{prefix}-{uuid.uuid4().hex[:6]}", name=prefix).tenant.id)
        contact = get_or_create_contact(session, ids[0], "webchat", "v1", "V")
        conversation = get_or_create_conversation(session, ids[0], contact, None).id
    return conversation, ids[0], ids[1]


def _inbound(tenant_id: str, conversation_id: str, n: int, status: str, at: datetime | None = None) -> None:
    with session_scope(cross_tenant="tests") as session:
        for _ in range(n):
            session.add(Message(tenant_id=tenant_id, conversation_id=conversation_id, channel="webchat",
                                direction="in", provider_message_id=uuid.uuid4().hex, text="q", status=status,
                                **({"created_at": at} if at else {})))


def _slug(tenant_id: str) -> str:
    from app.models import Tenant

    with session_scope(cross_tenant="tests") as session:
        return session.get_one(Tenant, tenant_id).slug


def _gate(cache_s: float = 60.0, **kw: object) -> QuotaGate:
    return QuotaGate(RateLimiter({}), default_plan="unlimited", cache_s=cache_s, **kw)  # type: ignore[arg-type]


def test_concurrent_messages_never_both_take_the_last_unit(tenants: tuple[str, str, str]) -> None:
    conversation, a, _ = tenants
    operations.set_plan(container(), _slug(a), "free", {"messages_per_month": 12, "messages_per_minute": None})
    _inbound(a, conversation, 2, "answered")
    gate = _gate()
    verdicts: list[str | None] = []
    lock = threading.Lock()

    def handle() -> None:
        for _ in range(5):
            verdict = gate.check_message(a)
            with lock:
                verdicts.append(verdict)

    threads = [threading.Thread(target=handle) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(verdicts) == 30
    assert verdicts.count(None) == 10  # 12 allowed, 2 already handled this month
    assert all("12 messages for" in v for v in verdicts if v is not None)


def test_a_waiting_burst_is_admitted_in_order_and_other_tenants_rows_do_not_count(
        tenants: tuple[str, str, str]) -> None:
    conversation, a, b = tenants
    operations.set_plan(container(), _slug(a), "free", {"messages_per_month": 3, "messages_per_minute": None})
    operations.set_plan(container(), _slug(b), "free", {"messages_per_month": 3, "messages_per_minute": None})
    _inbound(a, conversation, 5, "received")  # stored, none answered yet: the burst is not held against itself
    gate = _gate(cache_s=0)  # re-read the rows at every check
    assert gate.check_message(a) is None
    _inbound(a, conversation, 2, "answered")
    assert gate.check_message(a) is None  # 2 handled at this read, plus the 1 just let through: 3rd of 3
    _inbound(a, conversation, 1, "escalated")
    assert gate.check_message(a) is not None  # 3 handled: the allowance is used
    assert gate.check_message(b) is None  # B's own count is 0


def test_last_months_messages_do_not_count_and_the_month_rolls_over(tenants: tuple[str, str, str]) -> None:
    conversation, a, _ = tenants
    operations.set_plan(container(), _slug(a), "free", {"messages_per_month": 2, "messages_per_minute": None})
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    _inbound(a, conversation, 9, "answered", at=start - timedelta(seconds=1))
    _inbound(a, conversation, 2, "answered", at=start)
    clock = [start + timedelta(days=3)]
    gate = _gate(now=lambda: clock[0])
    assert gate.check_message(a) is not None  # this month's 2 are used (last month's 9 do not count)
    clock[0] = start + timedelta(days=40)  # next month: read again even though the cache is fresh
    assert gate.check_message(a) is None


def test_the_plans_messages_per_minute_apply(tenants: tuple[str, str, str]) -> None:
    _, a, b = tenants
    operations.set_plan(container(), _slug(a), "free", {"messages_per_minute": 2})
    gate = _gate()
    assert [gate.check_message(a) for _ in range(3)][:2] == [None, None]
    refused = gate.check_message(a)
    assert refused is not None and "at most 2 messages handled per tenant" in refused and "per minute" in refused
    assert gate.check_message(b) is None  # B is on the default (unlimited) plan


class _HeldGate(QuotaGate):
    """A gate whose first database read, once done, waits for `go`: the test changes the plan meanwhile."""

    def __init__(self) -> None:
        super().__init__(RateLimiter({}), default_plan="unlimited", cache_s=60.0)
        self.read = threading.Event()
        self.go = threading.Event()
        self.held = False

    def _read(self, tenant_id: str, read_at: float) -> Any:
        seen = super()._read(tenant_id, read_at)
        if not self.held:
            self.held = True
            self.read.set()
            assert self.go.wait(30)
        return seen


def test_a_refresh_that_read_the_old_plan_is_not_kept_after_the_plan_changes(
        tenants: tuple[str, str, str]) -> None:
    _, a, _ = tenants
    slug = _slug(a)
    operations.set_plan(container(), slug, "free", {"messages_per_month": 100, "messages_per_minute": None})
    gate = _HeldGate()
    container().use("quota", gate)  # the gate `set_plan` forgets
    verdicts: list[str | None] = []
    first = threading.Thread(target=lambda: verdicts.append(gate.check_message(a)))
    first.start()
    assert gate.read.wait(30)  # the refresh has read the 100-message plan and not stored it yet
    operations.set_plan(container(), slug, overrides={"messages_per_month": 0})
    gate.go.set()
    first.join(30)
    assert not first.is_alive()
    refused = gate.check_message(a)
    assert refused is not None and "plan's 0 messages for" in refused  # the new plan, not 10 s of the old one

"""Token usage and cost of LLM calls: one `llm_calls` row per attempt, and a tenant's summary by day and model.

Rows are written in their own short transaction right after the routed call (outside the message's transaction:
a call made is a call paid for, whatever happens to the answer afterwards). A redelivered message that is
answered again is recorded again, as it was paid again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Table, case, func, insert, select
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import LLMCall, new_id, utcnow
from app.providers.llm.router import CallRecord

# Built once, a Core insert: an ORM `insert(LLMCall)` was built, compiled and cache-keyed again on every call.
LLM_CALLS: Table = LLMCall.__table__  # type: ignore[assignment]
_INSERT = insert(LLM_CALLS)


def record_calls(records: Sequence[CallRecord]) -> None:
    """The attempts of one routed call (one tenant's), in the order they were made."""
    if not records:
        return
    now = utcnow()
    rows = [{
        "id": new_id(), "created_at": now, "day": now.date(), "tenant_id": r.tenant_id, "message_id": r.message_id,
        "provider": r.provider, "model": r.model, "outcome": r.outcome, "attempt": attempt, "streamed": r.streamed,
        "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens, "cost": r.cost,
        "latency_ms": r.latency_ms,
    } for attempt, r in enumerate(records, start=1)]
    with session_scope(tenant=records[0].tenant_id) as session:
        session.execute(_INSERT, rows)


@dataclass(frozen=True)
class UsageRow:
    day: date
    provider: str
    model: str
    calls: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # None when no call of the group had a price
    avg_latency_ms: int


def summary(session: Session, tenant_id: str, since: date, until: date) -> list[UsageRow]:
    """The tenant's calls from `since` to `until` (UTC days, both included), per day, provider and model."""
    failed = func.sum(case((LLMCall.outcome != "ok", 1), else_=0))
    stmt = (
        select(LLMCall.day, LLMCall.provider, LLMCall.model, func.count(), failed,
               func.sum(LLMCall.prompt_tokens), func.sum(LLMCall.completion_tokens), func.sum(LLMCall.cost),
               func.avg(LLMCall.latency_ms))
        .where(LLMCall.tenant_id == tenant_id, LLMCall.day >= since, LLMCall.day <= until)
        .group_by(LLMCall.day, LLMCall.provider, LLMCall.model)
        .order_by(LLMCall.day, LLMCall.provider, LLMCall.model)
    )
    return [
        UsageRow(day=day, provider=provider, model=model, calls=int(calls), failed=int(bad or 0),
                 prompt_tokens=int(prompt or 0), completion_tokens=int(output or 0),
                 cost=float(cost) if cost is not None else None, avg_latency_ms=round(float(latency or 0)))
        for day, provider, model, calls, bad, prompt, output, cost, latency in session.execute(stmt)
    ]

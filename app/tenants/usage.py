"""A tenant's usage per UTC calendar month, counted from stored rows: inbound `messages` and `llm_calls` tokens.

Nothing is counted twice or elsewhere: the rows are the record. An inbound message counts once whatever became of
it (answered, escalated, over the allowance...); every LLM attempt's tokens count, as every attempt was paid for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import LLMCall, Message


@dataclass(frozen=True)
class Period:
    start: datetime  # the first instant of the month, UTC
    end: datetime  # the first instant of the next month (exclusive)

    @classmethod
    def month_of(cls, moment: datetime | date) -> Period:
        start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
        following = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
        return cls(start, following)

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(days=1)).date()

    @property
    def label(self) -> str:
        return f"{self.start.year:04d}-{self.start.month:02d}"


def inbound_messages(session: Session, tenant_id: str, period: Period, *, handled_only: bool = False) -> int:
    """Inbound messages stored in `period`; `handled_only`: those no longer waiting (`received`) for an answer."""
    stmt = select(func.count()).select_from(Message).where(
        Message.tenant_id == tenant_id, Message.direction == "in",
        Message.created_at >= period.start, Message.created_at < period.end)
    if handled_only:
        stmt = stmt.where(Message.status != "received")
    return int(session.scalar(stmt) or 0)


def llm_tokens(session: Session, tenant_id: str, period: Period) -> int:
    """Prompt plus completion tokens of the tenant's LLM calls in `period`."""
    stmt = select(func.sum(LLMCall.prompt_tokens + LLMCall.completion_tokens)).where(
        LLMCall.tenant_id == tenant_id, LLMCall.day >= period.start.date(), LLMCall.day <= period.last_day)
    return int(session.scalar(stmt) or 0)

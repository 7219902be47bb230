from __future__ import annotations

from datetime import date

from sqlalchemy import Date, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, TenantOwned


class LLMCall(TenantOwned, IdMixin, Base):
    """One attempt at one LLM provider: what it cost and how it went. Never the prompt or the answer."""

    __tablename__ = "llm_calls"
    __table_args__ = (Index("ix_llm_calls_tenant_day", "tenant_id", "day"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    message_id: Mapped[str | None] = mapped_column(String(32), default=None)  # the inbound message answered
    day: Mapped[date] = mapped_column(Date)  # UTC day of created_at, for the per-day summary on any database
    provider: Mapped[str] = mapped_column(String(64))  # the name in the tenant's or operator's list
    model: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(32))  # ok | timeout | unavailable | rate_limited | auth | ...
    attempt: Mapped[int] = mapped_column(default=1)  # 1, 2...: its place among the attempts of one answer
    streamed: Mapped[bool] = mapped_column(default=False)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    cost: Mapped[float | None] = mapped_column(default=None)  # from the price table; None when it has no price
    latency_ms: Mapped[int] = mapped_column(default=0)

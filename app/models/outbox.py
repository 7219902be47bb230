from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned, utcnow


class OutboxEntry(TenantOwned, Base):
    """A bus entry to publish, written in the same transaction as the state change it announces (app/outbox.py).
    Deleted once published; `not_before` holds it back (a scheduled re-delivery, or the grace its writer has to
    publish it itself before a relay does)."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_not_before", "not_before"),
        Index("ix_outbox_message_id", "message_id"),
    )

    # Increasing in insertion order: the relay publishes oldest first, so a conversation's events keep their order.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    topic: Mapped[str] = mapped_column(String(32))
    # The message the event is about, so the redrive sweep can tell a message whose event is still on its way.
    message_id: Mapped[str | None] = mapped_column(String(32), default=None)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    not_before: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, TenantOwned, utcnow


class Escalation(TenantOwned, IdMixin, Base):
    __tablename__ = "escalations"
    __table_args__ = (
        Index("ix_escalations_tenant_status", "tenant_id", "status"),
        Index("ix_escalations_tenant_created", "tenant_id", "created_at"),  # analytics by time (app/analytics)
    )

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    # The inbound message that triggered it; unique so a redelivered message opens one escalation.
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | approved | rejected | taken_over
    reason: Mapped[str] = mapped_column(String(64))  # no_knowledge | low_confidence | injection | ...
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    draft: Mapped[str | None] = mapped_column(Text, default=None)
    draft_citations: Mapped[list[dict[str, Any]] | None] = mapped_column(default=None)
    # What the bot found when it escalated, for the console: e.g. {"grounding": {"unsupported": [...]}}.
    meta: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # What retrieval returned for the message (document, heading, text, score, rank), best first: the console
    # shows an agent what the bot had to answer from.
    passages: Mapped[list[dict[str, Any]] | None] = mapped_column(default=None)
    decision: Mapped[str | None] = mapped_column(String(16), default=None)  # approve | edit | reject | takeover
    final_text: Mapped[str | None] = mapped_column(Text, default=None)
    reviewer: Mapped[str | None] = mapped_column(String(200), default=None)
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    # The tenant's first-response target (app/review/sla.py): None without one, else `pending` until an agent
    # decides (`met`) or the target passes first (`breached`, the customer got one holding message).
    sla_state: Mapped[str | None] = mapped_column(String(16), default=None)
    sla_due_at: Mapped[datetime | None] = mapped_column(default=None)
    sla_breached_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEvent(TenantOwned, IdMixin, Base):
    """Append-only: rows are inserted, never updated or deleted by the application."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_tenant_created", "tenant_id", "created_at"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    actor: Mapped[str] = mapped_column(String(200))  # "system", "bot", "admin:<key name>", "agent:<key name>"
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str | None] = mapped_column(String(64), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TenantWebhook(TenantOwned, IdMixin, Base):
    """Where a tenant wants to hear of new escalations (app/review/notify.py): one URL, signed with its own
    secret (encrypted at rest). Escalations opened before `updated_at` are never sent to it."""

    __tablename__ = "tenant_webhooks"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret_encrypted: Mapped[str] = mapped_column(String(1000))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Handoff(TenantOwned, IdMixin, Base):
    """One stretch of a conversation in an agent's hands: from a takeover (of an escalation or of the conversation)
    to its release back to the bot. `ended_at` is None while the agent still has it. Written since migration 0012:
    agent handling time and the resolution time of taken-over escalations are only known from then on."""

    __tablename__ = "handoffs"
    __table_args__ = (
        Index("ix_handoffs_tenant_ended", "tenant_id", "ended_at"),
        Index("ix_handoffs_conversation_ended", "conversation_id", "ended_at"),
    )

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    # The escalation taken over, when the takeover was a decision on one (else a takeover from the conversation).
    escalation_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    agent: Mapped[str] = mapped_column(String(200))  # the principal's label, as on Escalation.reviewer
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_by: Mapped[str | None] = mapped_column(String(200), default=None)

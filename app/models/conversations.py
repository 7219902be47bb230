from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, TenantOwned


class Contact(TenantOwned, IdMixin, Base):
    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("tenant_id", "channel", "external_id"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(200))
    display_name: Mapped[str | None] = mapped_column(String(200), default=None)
    last_inbound_at: Mapped[datetime | None] = mapped_column(default=None)
    # unknown | granted | withdrawn (opted out: nothing is sent but the confirmation; app/contacts/consent.py)
    consent_status: Mapped[str] = mapped_column(String(16), default="unknown", server_default="unknown")
    consent_updated_at: Mapped[datetime | None] = mapped_column(default=None)
    consent_source: Mapped[str | None] = mapped_column(String(64), default=None)  # keyword | admin:<who> | api


class Conversation(TenantOwned, IdMixin, Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_tenant_contact", "tenant_id", "contact_id"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    channel_account_id: Mapped[str | None] = mapped_column(
        ForeignKey("channel_accounts.id", ondelete="SET NULL"), default=None
    )
    # "bot": the assistant answers; "human": an agent took over and the bot stays silent until released.
    mode: Mapped[str] = mapped_column(String(16), default="bot")
    assigned_agent: Mapped[str | None] = mapped_column(String(200), default=None)
    updated_at: Mapped[datetime | None] = mapped_column(default=None)


class Message(TenantOwned, IdMixin, Base):
    """Inbound and outbound messages. The unique key makes provider redeliveries harmless."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("tenant_id", "channel", "provider_message_id"),
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
        Index("ix_messages_provider_ref", "tenant_id", "channel", "provider_ref"),
        Index("ix_messages_tenant_created", "tenant_id", "created_at"),  # monthly usage, analytics by time
    )

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))  # "in" | "out"
    # Inbound: the provider's id. Outbound: our own idempotency key ("reply:<inbound id>", "esc:<id>"...).
    provider_message_id: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text, default="")
    # in: received -> answered | escalated | skipped | dead;  out: pending -> sent | delivered | read | failed
    status: Mapped[str] = mapped_column(String(16))
    # Who wrote an outbound message: "bot", "agent:<key name>".
    author: Mapped[str | None] = mapped_column(String(200), default=None)
    in_reply_to_id: Mapped[str | None] = mapped_column(String(32), default=None)
    citations: Mapped[list[dict[str, Any]] | None] = mapped_column(default=None)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    processed_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Outbound: the provider's id for what we sent (the first part's), which its delivery receipts name.
    provider_ref: Mapped[str | None] = mapped_column(String(200), default=None)

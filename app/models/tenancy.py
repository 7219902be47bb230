from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, TenantOwned


class Tenant(IdMixin, Base):
    __tablename__ = "tenants"

    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Brand persona: name, tone, greeting, sign-off, language... rendered into the prompt templates.
    persona: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Policies: escalation threshold, banned phrases, human-handoff keywords, LLM settings (base_url, model, ...).
    policies: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Encrypted LLM API key, when the tenant brings its own.
    llm_api_key_encrypted: Mapped[str | None] = mapped_column(String(1000), default=None)
    # Encrypted {provider name: API key} for the entries of `policies.llm.providers` that have their own key.
    llm_provider_keys_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    live_pack_version: Mapped[int | None] = mapped_column(default=None)
    # The plan the operator assigned (app/tenants/plans.py; None: DEFAULT_PLAN) and its per-figure overrides.
    plan: Mapped[str | None] = mapped_column(String(32), default=None)
    plan_overrides: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class ApiKey(TenantOwned, IdMixin, Base):
    __tablename__ = "api_keys"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    scope: Mapped[str] = mapped_column(String(16))  # "admin" | "agent"
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class ChannelAccount(TenantOwned, IdMixin, Base):
    """A tenant's account on one provider. `external_id` (phone number id, bot id...) routes webhooks."""

    __tablename__ = "channel_accounts"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200), default="")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # non-secret settings
    credentials_encrypted: Mapped[str | None] = mapped_column(String(8000), default=None)
    enabled: Mapped[bool] = mapped_column(default=True)

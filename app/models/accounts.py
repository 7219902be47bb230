"""People who log in: one `users` row per person (one email, one password), a `memberships` row per tenant they
belong to (with their role there), and their logins (`login_sessions`, each a family of rotating refresh tokens)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, TenantOwned

ROLES = ("owner", "admin", "agent", "viewer")


class User(IdMixin, Base):
    """A person. Not tenant-owned: what they may see comes from their memberships only."""

    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(200), unique=True)  # stored lower-cased
    password_hash: Mapped[str] = mapped_column(String(255))  # Argon2id, PHC string format


class Membership(TenantOwned, IdMixin, Base):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("tenant_id", "user_id"),
        CheckConstraint("role IN ('owner', 'admin', 'agent', 'viewer')", name="role"),
    )

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))


class LoginSession(TenantOwned, IdMixin, Base):
    """One login of one person into one tenant: the family its refresh tokens belong to. Revoking it (logout, a
    refresh token used twice, the person removed) ends every token of the family, access tokens included."""

    __tablename__ = "login_sessions"
    __table_args__ = (Index("ix_login_sessions_tenant_user", "tenant_id", "user_id"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_reason: Mapped[str | None] = mapped_column(String(32), default=None)  # logout | reuse | removed | ...


class RefreshToken(IdMixin, Base):
    """A refresh token, stored as the SHA-256 of its 256 random bits. `used_at` is set by its one allowed use."""

    __tablename__ = "refresh_tokens"

    session_id: Mapped[str] = mapped_column(ForeignKey("login_sessions.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class Invitation(TenantOwned, IdMixin, Base):
    """An offer of a role in a tenant, made by its owners or admins to an email. Whether or not that email has an
    account anywhere is decided only when the person accepts (app/accounts/invitations.py), so the admin who
    invites learns nothing about other tenants' people. The token is stored as its SHA-256."""

    __tablename__ = "invitations"
    __table_args__ = (
        Index("ix_invitations_tenant_email", "tenant_id", "email"),
        CheckConstraint("role IN ('owner', 'admin', 'agent', 'viewer')", name="role"),
    )

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(200))  # stored lower-cased
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[str] = mapped_column(String(200))  # the audit actor
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

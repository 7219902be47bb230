"""Logins: a `LoginSession` per (person, tenant), its refresh tokens and access tokens. Used by the `/auth` routes
and the API's authentication (app/auth.py).

Refreshing spends the presented refresh token and issues the next one in the same session; presenting a spent one
again means it was copied, so the whole session is revoked (`RefreshReused`; the caller commits the revocation).
Functions flush; the caller commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.accounts import passwords, tokens
from app.accounts.service import (
    Conflict,
    Forbidden,
    Invalid,
    LoginFailed,
    RefreshRefused,
    RefreshReused,
    UnknownRefreshToken,
    WrongPassword,
    normalize_email,
)
from app.audit import record
from app.auth import Principal
from app.config import get_settings
from app.models import LoginSession, Membership, RefreshToken, Tenant, User, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int


def check_password(session: Session, email: str, password: str) -> User:
    """The account if the password is right; `LoginFailed` otherwise, after about the same work whether or
    not the account exists. A hash made with older parameters is replaced."""
    try:
        email = normalize_email(email)
    except Invalid:
        email = ""
    user = session.scalars(select(User).where(User.email == email)).first() if email else None
    ok, new_hash = passwords.verify(user.password_hash if user else None, password)
    if user is None or not ok:
        raise LoginFailed()
    if new_hash is not None:
        user.password_hash = new_hash
    return user


def login(session: Session, email: str, password: str, tenant_slug: str | None) -> Tokens:
    user = check_password(session, email, password)
    stmt = (select(Membership.tenant_id, Tenant.slug).join(Tenant, Tenant.id == Membership.tenant_id)
            .where(Membership.user_id == user.id))
    if tenant_slug:
        stmt = stmt.where(Tenant.slug == tenant_slug.strip())
    tenants = session.execute(stmt.limit(2)).all()
    if not tenants:
        # A tenant that does not exist and one the person is not in are the same answer.
        raise Forbidden(f"this account has no access to tenant {tenant_slug!r}" if tenant_slug
                        else "this account belongs to no tenant any more: ask an admin to add it again")
    if len(tenants) > 1:
        raise Conflict("this account belongs to several tenants: send `tenant` with the slug of the one to log into")
    return start(session, user.id, tenants[0][0])


def start(session: Session, user_id: str, tenant_id: str) -> Tokens:
    """A new login of a person whose password was just checked, into a tenant they belong to."""
    login_session = LoginSession(tenant_id=tenant_id, user_id=user_id)
    session.add(login_session)
    session.flush()
    record(session, tenant_id, f"user:{user_id}", "auth.login", "user", user_id, {"session_id": login_session.id})
    return _issue(session, user_id, tenant_id, login_session.id)


def _issue(session: Session, user_id: str, tenant_id: str, session_id: str) -> Tokens:
    now = utcnow()
    refresh, refresh_hash = tokens.new_refresh_token()
    session.add(RefreshToken(session_id=session_id, token_hash=refresh_hash,
                             expires_at=now + timedelta(seconds=get_settings().refresh_token_ttl_s)))
    access, ttl = tokens.issue_access(tokens.AccessClaims(user_id, tenant_id, session_id), now)
    session.flush()
    return Tokens(access, refresh, ttl)


def refresh(session: Session, refresh_token: str) -> Tokens:
    """Spend `refresh_token` and issue the next pair in the same login. Raises `RefreshReused` (the caller must
    revoke the login with `revoke_login` in a transaction of its own) or `RefreshRefused`."""
    row = session.scalars(select(RefreshToken).where(
        RefreshToken.token_hash == tokens.hash_refresh_token(refresh_token))).first()
    if row is None:
        raise UnknownRefreshToken()
    login_session = session.get_one(LoginSession, row.session_id)
    if login_session.revoked_at is not None:
        raise RefreshRefused("this login has ended: log in again")
    now = utcnow()
    # Spent atomically: of two requests presenting the same token, exactly one gets the next pair.
    spent = session.execute(update(RefreshToken).where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
                            .values(used_at=now).execution_options(synchronize_session=False))
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise RefreshReused(login_session.id)
    if row.expires_at <= now:
        raise RefreshRefused("the refresh token has expired: log in again")
    member = session.scalars(select(Membership.id).where(Membership.tenant_id == login_session.tenant_id,
                                                         Membership.user_id == login_session.user_id)).first()
    if member is None:
        raise RefreshRefused("this account no longer has access to the tenant")
    return _issue(session, login_session.user_id, login_session.tenant_id, login_session.id)


def change_password(session: Session, who: Principal, current: str, new: str) -> None:
    """A logged-in person changes their own password; every other login of theirs (in any tenant) ends."""
    if who.user_id is None:
        raise Forbidden("only a logged-in person has a password to change")
    user = session.get_one(User, who.user_id)
    ok, _ = passwords.verify(user.password_hash, current)
    if not ok:
        raise WrongPassword()
    try:
        passwords.check_policy(new)
    except passwords.WeakPassword as exc:
        raise Invalid(str(exc)) from None
    user.password_hash = passwords.hash_password(new)
    session.execute(update(LoginSession).where(
        LoginSession.user_id == user.id, LoginSession.id != who.session_id, LoginSession.revoked_at.is_(None),
    ).values(revoked_at=utcnow(), revoked_reason="password_changed").execution_options(synchronize_session=False))
    record(session, who.tenant_id, who.actor, "auth.password_changed", "user", user.id)


def revoke_login(session: Session, session_id: str, reason: str, actor: str | None = None) -> None:
    """End one login (idempotent): its refresh tokens are refused, and so are its access tokens from the next
    request on."""
    login_session = session.get(LoginSession, session_id)
    if login_session is None or login_session.revoked_at is not None:
        return
    login_session.revoked_at = utcnow()
    login_session.revoked_reason = reason
    record(session, login_session.tenant_id, actor or f"user:{login_session.user_id}",
           "auth.logout" if reason == "logout" else "auth.revoked", "user", login_session.user_id,
           {"session_id": session_id, "reason": reason})
    if reason == "refresh_reused":
        log.warning("a spent refresh token was presented again: login %s revoked", session_id)
    session.flush()


def logout_with_refresh(session: Session, refresh_token: str) -> None:
    """Log out with the refresh token alone (when the access token has expired). Unknown tokens do nothing."""
    row = session.scalars(select(RefreshToken).where(
        RefreshToken.token_hash == tokens.hash_refresh_token(refresh_token))).first()
    if row is not None:
        revoke_login(session, row.session_id, "logout")


def principal_for(session: Session, claims: tokens.AccessClaims) -> Principal | None:
    """The person's principal for a valid access token, or None when its login was revoked or the person is no
    longer in the tenant. The role is the current one, not the one at login."""
    row = session.execute(
        select(Membership.role, User.email, Tenant.slug)
        .join(LoginSession, (LoginSession.user_id == Membership.user_id)
              & (LoginSession.tenant_id == Membership.tenant_id))
        .join(User, User.id == Membership.user_id)
        .join(Tenant, Tenant.id == Membership.tenant_id)
        .where(LoginSession.id == claims.session_id, LoginSession.user_id == claims.user_id,
               LoginSession.tenant_id == claims.tenant_id, LoginSession.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    role, email, slug = row
    scope = "admin" if role in ("owner", "admin") else role
    return Principal(claims.tenant_id, slug, scope, None, email, user_id=claims.user_id, role=role,
                     session_id=claims.session_id)

"""People, their roles per tenant, and their logins. Used by the admin API, the `/auth` routes and the CLI alike.

Roles rank `owner > admin > agent > viewer`. Owners and admins manage the tenant's people; only an owner may add,
promote, demote or remove an owner, and the last owner can be neither demoted nor removed. API keys act with
their scope's rank (`admin` or `agent`); the operator (the local CLI, the embedded server's operator token) acts
as an owner, which is how a tenant gets its first owner (`switchboard user add --role owner`).

A login is a `LoginSession` for one (person, tenant). Refreshing spends the presented refresh token and issues
the next one in the same session; presenting a spent one again means it was copied, so the whole session is
revoked (`RefreshReused`; the caller commits the revocation). Functions flush; the caller commits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts import passwords, tokens
from app.audit import record
from app.auth import Principal
from app.config import get_settings
from app.models import ROLES, LoginSession, Membership, RefreshToken, Tenant, User, utcnow

log = logging.getLogger(__name__)

RANK = {role: rank for rank, role in enumerate(reversed(ROLES))}  # viewer 0 ... owner 3
# Escalation reviewers and message authors (`agent:<email>`) are stored in 200-character columns.
EMAIL_MAX = 190
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LOGIN_FAILED = "wrong email or password"


class AccountError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(AccountError):
    status = 404


class Forbidden(AccountError):
    status = 403


class WrongPassword(Forbidden):
    def __init__(self) -> None:
        super().__init__("the current password is wrong")


class Conflict(AccountError):
    status = 409


class Invalid(AccountError):
    status = 422


class LoginFailed(AccountError):
    """Wrong email or password: one message for both, so nobody learns which accounts exist."""

    status = 401

    def __init__(self) -> None:
        super().__init__(LOGIN_FAILED)


class RefreshRefused(AccountError):
    status = 401


class UnknownRefreshToken(RefreshRefused):
    def __init__(self) -> None:
        super().__init__("invalid refresh token: log in again")


class RefreshReused(RefreshRefused):
    def __init__(self, session_id: str) -> None:
        super().__init__("this refresh token was already used, so it may have been copied: the login it belongs "
                         "to is revoked; log in again")
        self.session_id = session_id


def normalize_email(raw: str) -> str:
    email = raw.strip().lower()
    if len(email) > EMAIL_MAX:
        raise Invalid(f"email: at most {EMAIL_MAX} characters")
    if not _EMAIL_RE.match(email):
        raise Invalid("email: not an email address (name@example.com)")
    return email


def _role(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


# --- people of a tenant (admin API, CLI) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    user_id: str
    email: str
    role: str
    added_at: datetime


def _members(tenant_id: str) -> Select[Membership, str]:
    return (select(Membership, User.email).join(User, User.id == Membership.user_id)
            .where(Membership.tenant_id == tenant_id))


def _member(membership: Membership, email: str) -> Member:
    return Member(membership.user_id, email, membership.role, membership.created_at)


def list_members(session: Session, tenant_id: str) -> list[Member]:
    rows = session.execute(_members(tenant_id).order_by(Membership.created_at, Membership.id))
    return [_member(m, email) for m, email in rows]


def _membership(session: Session, tenant_id: str, user_id: str, *, lock: bool = False) -> tuple[Membership, str]:
    """The person's membership in this tenant; a person of another tenant is as missing as nobody."""
    stmt = _members(tenant_id).where(Membership.user_id == user_id)
    row = session.execute(stmt.with_for_update(of=Membership) if lock else stmt).first()
    if row is None:
        raise NotFound(f"no user {user_id!r} in this tenant")
    return row[0], row[1]


def get_member(session: Session, tenant_id: str, user_id: str) -> Member:
    return _member(*_membership(session, tenant_id, user_id))


def _may_manage(who: Principal, *roles: str) -> None:
    if RANK[who.rank] < RANK["admin"]:
        raise Forbidden("only owners and admins manage people")
    if "owner" in roles and who.rank != "owner":
        raise Forbidden("only an owner can add, promote, demote or remove an owner")


def add_member(session: Session, who: Principal, email: str, role: str,
               password: str | None = None) -> tuple[Member, bool]:
    """Add a person to the caller's tenant: (member, whether a new account was made). A new account needs an
    initial password; an existing account (the person belongs to another tenant) keeps its own password, and
    `password` is not used."""
    email, role = normalize_email(email), _role(role)
    _may_manage(who, role)
    user = session.scalars(select(User).where(User.email == email)).first()
    created = user is None
    if user is None:
        if password is None:
            raise Invalid("a new account needs an initial password (the API's `password` field, the CLI's "
                          "--password-stdin); the person can change it at POST /auth/password")
        try:
            passwords.check_policy(password)
        except passwords.WeakPassword as exc:
            raise Invalid(str(exc)) from None
        user = User(email=email, password_hash=passwords.hash_password(password))
        session.add(user)
    elif session.scalars(select(Membership.role).where(Membership.tenant_id == who.tenant_id,
                                                       Membership.user_id == user.id)).first() is not None:
        raise Conflict(f"{email} is already in this tenant: change their role with PATCH /admin/v1/users/{user.id}")
    try:
        session.flush()
        membership = Membership(tenant_id=who.tenant_id, user_id=user.id, role=role)
        session.add(membership)
        session.flush()
    except IntegrityError:
        raise Conflict(f"{email} was added by someone else at the same moment; list the users to see it") from None
    record(session, who.tenant_id, who.actor, "user.added", "user", user.id,
           {"email": email, "role": role, "new_account": created})
    return _member(membership, email), created


def _lock_owners(session: Session, tenant_id: str) -> None:
    """Lock the tenant's owner rows (Postgres) so two owners cannot demote each other at once and leave none."""
    session.scalars(select(Membership.id).where(Membership.tenant_id == tenant_id, Membership.role == "owner")
                    .with_for_update()).all()


def _keep_an_owner(session: Session, tenant_id: str) -> None:
    session.flush()  # on SQLite the write lock is taken here: a concurrent change waits and then counts again
    left = session.scalar(select(func.count()).select_from(Membership)
                          .where(Membership.tenant_id == tenant_id, Membership.role == "owner"))
    if not left:
        raise Conflict("this is the tenant's last owner: make someone else owner first")


def change_role(session: Session, who: Principal, user_id: str, role: str) -> Member:
    role = _role(role)
    current, _ = _membership(session, who.tenant_id, user_id)
    _may_manage(who, current.role, role)
    if current.role == "owner":
        _lock_owners(session, who.tenant_id)
    membership, email = _membership(session, who.tenant_id, user_id, lock=True)
    before = membership.role
    if before != role:
        membership.role = role
        if before == "owner":
            _keep_an_owner(session, who.tenant_id)
        record(session, who.tenant_id, who.actor, "user.role_changed", "user", user_id,
               {"email": email, "from": before, "to": role})
    return _member(membership, email)


def remove_member(session: Session, who: Principal, user_id: str) -> None:
    """Remove the person from the caller's tenant and end their logins into it at once. An account left in no
    tenant is deleted (nobody could use it; its password hash is not kept)."""
    current, _ = _membership(session, who.tenant_id, user_id)
    _may_manage(who, current.role)
    if current.role == "owner":
        _lock_owners(session, who.tenant_id)
    membership, email = _membership(session, who.tenant_id, user_id, lock=True)
    role = membership.role
    session.delete(membership)
    if role == "owner":
        _keep_an_owner(session, who.tenant_id)
    _revoke_sessions(session, who.tenant_id, user_id, "removed")
    record(session, who.tenant_id, who.actor, "user.removed", "user", user_id, {"email": email, "role": role})
    session.flush()
    if not session.scalar(select(func.count()).select_from(Membership).where(Membership.user_id == user_id)):
        session.execute(delete(User).where(User.id == user_id))


def user_names(session: Session, actors: Iterable[str]) -> dict[str, str]:
    """`user:<id>` audit actors -> the person's email (while the account exists)."""
    ids = {actor.removeprefix("user:") for actor in actors if actor.startswith("user:")}
    if not ids:
        return {}
    return {f"user:{user_id}": email for user_id, email in session.execute(
        select(User.id, User.email).where(User.id.in_(ids)))}


def tenant_operator(session: Session, slug: str) -> Principal:
    """The operator's principal for a tenant (the local CLI acts as the machine's operator)."""
    tenant = session.scalars(select(Tenant).where(Tenant.slug == slug)).first()
    if tenant is None:
        raise NotFound(f"no tenant {slug!r}")
    return Principal(tenant.id, tenant.slug, "admin", None, "operator")


# --- logins --------------------------------------------------------------------------------------------------


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
    tenant_id = tenants[0][0]
    login_session = LoginSession(tenant_id=tenant_id, user_id=user.id)
    session.add(login_session)
    session.flush()
    record(session, tenant_id, f"user:{user.id}", "auth.login", "user", user.id, {"session_id": login_session.id})
    return _issue(session, user.id, tenant_id, login_session.id)


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


def _revoke_sessions(session: Session, tenant_id: str, user_id: str, reason: str) -> None:
    session.execute(update(LoginSession).where(
        LoginSession.tenant_id == tenant_id, LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None),
    ).values(revoked_at=utcnow(), revoked_reason=reason).execution_options(synchronize_session=False))


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

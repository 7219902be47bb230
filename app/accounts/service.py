"""People and their roles per tenant (their logins: app/accounts/logins.py). Used by the admin API, the `/auth`
routes and the CLI alike.

Roles rank `owner > admin > agent > viewer`. Owners and admins manage the tenant's people; only an owner may add,
promote, demote or remove an owner, and the last owner can be neither demoted nor removed. API keys act with
their scope's rank (`admin` or `agent`); the operator (the local CLI, the embedded server's operator token) acts
as an owner, which is how a tenant gets its first owner (`switchboard user add --role owner`).

Functions flush; the caller commits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts import passwords
from app.audit import record
from app.auth import Principal
from app.models import ROLES, LoginSession, Membership, Tenant, User, utcnow

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
    # In any tenant: the account is deleted only once it is in none (in this transaction, after the delete above).
    if not session.scalar(select(func.count()).select_from(Membership).where(Membership.user_id == user_id)
                          .execution_options(cross_tenant="a person's memberships across tenants")):
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


def _revoke_sessions(session: Session, tenant_id: str, user_id: str, reason: str) -> None:
    session.execute(update(LoginSession).where(
        LoginSession.tenant_id == tenant_id, LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None),
    ).values(revoked_at=utcnow(), revoked_reason=reason).execution_options(synchronize_session=False))

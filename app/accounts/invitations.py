"""Invitations: how owners and admins add a person to their tenant through the admin API.

An admin invites an email with a role and gets back a one-time token to hand to the person. The answer is the
same whether or not that email already has an account (in any tenant), so inviting reveals nothing about other
tenants' people. The person accepts with the token and a password: the password of their existing account (so a
token alone never joins someone else's account), or the initial password of a new one. Accepting makes the
membership and logs them in.

The operator's `switchboard user add` still adds people directly (the operator sees every tenant anyway).
Functions flush; the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.accounts import passwords, tokens
from app.accounts.service import AccountError, Conflict, Invalid, LoginFailed, _may_manage, _role, normalize_email
from app.audit import record
from app.auth import Principal
from app.models import Invitation, Membership, User, utcnow

VALID_FOR = timedelta(days=7)


class InvitationRefused(AccountError):
    """Unknown, used, revoked or expired: one answer for all, so a guessed token learns nothing."""

    status = 404

    def __init__(self) -> None:
        super().__init__("unknown, used, revoked or expired invitation: ask an admin of the tenant to invite you "
                         "again")


@dataclass(frozen=True)
class Issued:
    invitation: Invitation
    token: str  # shown once, to the admin who invites; only its hash is stored


@dataclass(frozen=True)
class Accepted:
    tenant_id: str
    user_id: str
    role: str
    new_account: bool


def invite(session: Session, who: Principal, email: str, role: str) -> Issued:
    """Invite `email` to the caller's tenant. A pending invitation of the same email is replaced (its token stops
    working). Someone already in this tenant is a 409: the caller can see their own tenant's people."""
    email, role = normalize_email(email), _role(role)
    _may_manage(who, role)
    member = session.scalar(select(Membership.user_id).join(User, User.id == Membership.user_id)
                            .where(Membership.tenant_id == who.tenant_id, User.email == email))
    if member is not None:
        raise Conflict(f"{email} is already in this tenant: change their role with PATCH /admin/v1/users/{member}")
    now = utcnow()
    for earlier in session.scalars(_pending(who.tenant_id).where(Invitation.email == email).with_for_update()):
        earlier.revoked_at = now
    token, token_hash = tokens.new_refresh_token()
    invitation = Invitation(tenant_id=who.tenant_id, email=email, role=role, token_hash=token_hash,
                            invited_by=who.actor, expires_at=now + VALID_FOR)
    session.add(invitation)
    session.flush()
    record(session, who.tenant_id, who.actor, "user.invited", "invitation", invitation.id,
           {"email": email, "role": role})
    return Issued(invitation, token)


def _pending(tenant_id: str) -> Select[Invitation]:
    return select(Invitation).where(Invitation.tenant_id == tenant_id, Invitation.accepted_at.is_(None),
                                    Invitation.revoked_at.is_(None), Invitation.expires_at > utcnow())


def pending(session: Session, tenant_id: str) -> list[Invitation]:
    """The tenant's invitations not yet accepted, revoked or expired, oldest first."""
    return list(session.scalars(_pending(tenant_id).order_by(Invitation.created_at, Invitation.id)))


def revoke(session: Session, who: Principal, invitation_id: str) -> None:
    """Withdraw a pending invitation of the caller's tenant; another tenant's is as missing as none."""
    invitation = session.scalar(select(Invitation).where(Invitation.id == invitation_id,
                                                         Invitation.tenant_id == who.tenant_id))
    if invitation is None or invitation.accepted_at is not None or invitation.revoked_at is not None:
        raise InvitationNotFound(invitation_id)
    _may_manage(who, invitation.role)
    invitation.revoked_at = utcnow()
    record(session, who.tenant_id, who.actor, "user.invitation_revoked", "invitation", invitation.id,
           {"email": invitation.email, "role": invitation.role})


class InvitationNotFound(AccountError):
    status = 404

    def __init__(self, invitation_id: str) -> None:
        super().__init__(f"no pending invitation {invitation_id!r} in this tenant")


def find(session: Session, token: str, *, now: datetime | None = None) -> Invitation:
    """The pending invitation this token was issued for (locked until the transaction ends)."""
    invitation = session.scalar(select(Invitation).where(Invitation.token_hash == tokens.hash_refresh_token(token))
                                .with_for_update())
    if (invitation is None or invitation.accepted_at is not None or invitation.revoked_at is not None
            or invitation.expires_at <= (now or utcnow())):
        raise InvitationRefused()
    return invitation


def accept(session: Session, invitation: Invitation, password: str) -> Accepted:
    """Join the tenant of a pending invitation (`find`). With an existing account the password must be that
    account's (`LoginFailed` otherwise, counted like a failed login); without one it becomes the new account's."""
    user = session.scalar(select(User).where(User.email == invitation.email))
    created = user is None
    if user is None:
        try:
            passwords.check_policy(password)
        except passwords.WeakPassword as exc:
            raise Invalid(str(exc)) from None
        user = User(email=invitation.email, password_hash=passwords.hash_password(password))
        session.add(user)
        session.flush()
    else:
        ok, new_hash = passwords.verify(user.password_hash, password)
        if not ok:
            raise LoginFailed()
        if new_hash is not None:
            user.password_hash = new_hash
    invitation.accepted_at = utcnow()
    role = invitation.role
    membership = session.scalar(select(Membership).where(Membership.tenant_id == invitation.tenant_id,
                                                         Membership.user_id == user.id))
    if membership is None:  # added meanwhile by the operator: keep the role they were given
        session.add(Membership(tenant_id=invitation.tenant_id, user_id=user.id, role=role))
    else:
        role = membership.role
    session.flush()
    record(session, invitation.tenant_id, f"user:{user.id}", "user.added", "user", user.id,
           {"email": invitation.email, "role": role, "new_account": created, "invitation_id": invitation.id,
            "invited_by": invitation.invited_by})
    return Accepted(invitation.tenant_id, user.id, role, created)

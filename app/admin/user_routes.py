"""Admin API, people (`/admin/v1/users`): who may log into the tenant, and with which role.

Owners and admins (their logins, or admin API keys) manage the tenant's people, adding them by invitation
(app/accounts/invitations.py); only an owner may invite, promote, demote or remove an owner, and the last owner
stays. A user id of another tenant is a 404, like a missing one.
Every change is audited; removing someone ends their logins into this tenant at once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.accounts import invitations, service
from app.admin.request_limit import LIMITED
from app.auth import Admin
from app.db import session_scope
from app.models import Invitation

router = APIRouter(prefix="/admin/v1", tags=["admin: users"], dependencies=LIMITED)
Role = Literal["owner", "admin", "agent", "viewer"]
_T = TypeVar("_T")


class UserIn(BaseModel):
    email: str = Field(min_length=3, max_length=service.EMAIL_MAX)
    role: Role

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"email": "dana@example.com", "role": "agent"},
    ]})


class RoleIn(BaseModel):
    role: Role

    model_config = ConfigDict(extra="forbid")


class UserOut(BaseModel):
    user_id: str
    email: str
    role: Role
    added_at: datetime = Field(description="When the person was added to this tenant.")


class InvitationOut(BaseModel):
    invitation_id: str
    email: str
    role: Role
    invited_by: str
    created_at: datetime
    expires_at: datetime


class IssuedInvitationOut(InvitationOut):
    token: str = Field(description="Shown once: hand it to the person, who accepts at POST /auth/invitations/accept "
                                   "with it and a password (their account's, or a new one's).")


class InvitationsOut(BaseModel):
    invitations: list[InvitationOut]


class UsersOut(BaseModel):
    users: list[UserOut]


def _out(member: service.Member) -> UserOut:
    return UserOut(user_id=member.user_id, email=member.email, role=member.role,  # type: ignore[arg-type]
                   added_at=member.added_at)


def _in_transaction(tenant_id: str, fn: Callable[[Session], _T]) -> _T:
    try:
        with session_scope(tenant=tenant_id) as session:
            return fn(session)
    except service.AccountError as exc:
        raise HTTPException(exc.status, exc.message) from exc


@router.get("/users", response_model=UsersOut, summary="List the tenant's people")
def list_users(who: Admin) -> UsersOut:
    """Everyone who may log into this tenant, with their role, in the order they were added."""
    return _in_transaction(who.tenant_id, lambda db: UsersOut(
        users=[_out(m) for m in service.list_members(db, who.tenant_id)]))


def _invitation(invitation: Invitation) -> dict[str, Any]:
    return {"invitation_id": invitation.id, "email": invitation.email, "role": invitation.role,
            "invited_by": invitation.invited_by, "created_at": invitation.created_at,
            "expires_at": invitation.expires_at}


@router.post("/users", response_model=IssuedInvitationOut, status_code=201, summary="Invite a person", responses={
    403: {"description": "Only owners may invite an owner."},
    409: {"description": "The person is already in this tenant."},
    422: {"description": "Bad email or role."},
})
def add_user(body: UserIn, who: Admin) -> IssuedInvitationOut:
    """Invite a person to this tenant with a role: the answer holds a one-time token (valid 7 days) to hand to
    them. They accept at POST /auth/invitations/accept with the token and a password: their own, if the email
    already has an account, or the initial password of a new account. The answer is the same either way, so
    inviting tells nothing about other tenants. Inviting the same email again replaces the earlier token."""

    def work(db: Session) -> IssuedInvitationOut:
        issued = invitations.invite(db, who, body.email, body.role)
        return IssuedInvitationOut(**_invitation(issued.invitation), token=issued.token)

    return _in_transaction(who.tenant_id, work)


@router.get("/invitations", response_model=InvitationsOut, summary="List pending invitations")
def list_invitations(who: Admin) -> InvitationsOut:
    """Invitations of this tenant not yet accepted, withdrawn or expired, oldest first (tokens are not shown)."""
    return _in_transaction(who.tenant_id, lambda db: InvitationsOut(invitations=[
        InvitationOut(**_invitation(i)) for i in invitations.pending(db, who.tenant_id)]))


@router.delete("/invitations/{invitation_id}", status_code=204, summary="Withdraw an invitation", responses={
    403: {"description": "Only owners may withdraw an owner's invitation."},
    404: {"description": "No pending invitation with that id in this tenant."},
})
def revoke_invitation(invitation_id: str, who: Admin) -> Response:
    _in_transaction(who.tenant_id, lambda db: invitations.revoke(db, who, invitation_id))
    return Response(status_code=204)


@router.get("/users/{user_id}", response_model=UserOut, summary="Get a person")
def get_user(user_id: str, who: Admin) -> UserOut:
    return _in_transaction(who.tenant_id, lambda db: _out(service.get_member(db, who.tenant_id, user_id)))


@router.patch("/users/{user_id}", response_model=UserOut, summary="Change a person's role", responses={
    403: {"description": "Only owners may promote to or demote from owner."},
    409: {"description": "That would leave the tenant without an owner."},
})
def change_role(user_id: str, body: RoleIn, who: Admin) -> UserOut:
    """Takes effect on the person's next request (roles are read per request, not kept in tokens)."""
    return _in_transaction(who.tenant_id, lambda db: _out(service.change_role(db, who, user_id, body.role)))


@router.delete("/users/{user_id}", status_code=204, summary="Remove a person", responses={
    403: {"description": "Only owners may remove an owner."},
    409: {"description": "The tenant's last owner cannot be removed."},
})
def remove_user(user_id: str, who: Admin) -> Response:
    """Removes the person from this tenant and ends their logins into it at once. Their decisions stay in the
    audit log and on the escalations they decided."""
    _in_transaction(who.tenant_id, lambda db: service.remove_member(db, who, user_id))
    with session_scope(cross_tenant="account cleanup after a removal") as session:
        service.delete_if_in_no_tenant(session, user_id)
    return Response(status_code=204)

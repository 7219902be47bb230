"""Admin API, people (`/admin/v1/users`): who may log into the tenant, and with which role.

Owners and admins (their logins, or admin API keys) manage the tenant's people; only an owner may add, promote,
demote or remove an owner, and the last owner stays. A user id of another tenant is a 404, like a missing one.
Every change is audited; removing someone ends their logins into this tenant at once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal, TypeVar

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy.orm import Session

from app.accounts import service
from app.admin.request_limit import LIMITED
from app.auth import Admin
from app.db import session_scope

router = APIRouter(prefix="/admin/v1", tags=["admin: users"], dependencies=LIMITED)
Role = Literal["owner", "admin", "agent", "viewer"]
_T = TypeVar("_T")


class UserIn(BaseModel):
    email: str = Field(min_length=3, max_length=service.EMAIL_MAX)
    role: Role
    password: SecretStr | None = Field(
        default=None, max_length=1024,
        description="Initial password for a new account (at least 12 characters); give it to the person out of "
                    "band. Not used when the email already has an account (in another tenant): that person keeps "
                    "their own password.",
    )

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"email": "dana@example.com", "role": "agent", "password": "correct horse battery staple"},
    ]})


class RoleIn(BaseModel):
    role: Role

    model_config = ConfigDict(extra="forbid")


class UserOut(BaseModel):
    user_id: str
    email: str
    role: Role
    added_at: datetime = Field(description="When the person was added to this tenant.")


class NewUserOut(UserOut):
    new_account: bool = Field(description="False when the email already had an account, whose password is kept.")


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


@router.post("/users", response_model=NewUserOut, status_code=201, summary="Add a person", responses={
    403: {"description": "Only owners may add an owner."},
    409: {"description": "The person is already in this tenant."},
    422: {"description": "Bad email or role, or a new account without a (long enough) password."},
})
def add_user(body: UserIn, who: Admin) -> NewUserOut:
    """Give a person a role in this tenant. A new email gets an account with the initial password sent; an email
    that already has an account (the person works for another tenant too) is added with its own password."""

    def work(db: Session) -> NewUserOut:
        password = body.password.get_secret_value() if body.password is not None else None
        member, created = service.add_member(db, who, body.email, body.role, password)
        return NewUserOut(**_out(member).model_dump(), new_account=created)

    return _in_transaction(who.tenant_id, work)


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
    return Response(status_code=204)

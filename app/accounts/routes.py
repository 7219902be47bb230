"""`/auth`: people log in with the OAuth2 password flow and get a short-lived access token (send it as
`Authorization: Bearer <token>` to the review and admin APIs) and a refresh token that is good for one use.

Failed logins are counted per account (the email, whether or not it exists) and per client address; while
either window is full the answer is 429 with `Retry-After`, before any password is checked.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Header, HTTPException, Request, Response
from pydantic import BaseModel, Field

from app.accounts import invitations, logins, service
from app.accounts.tokens import looks_like_jwt
from app.api.services import services_of
from app.auth import Viewer, authenticate
from app.db import session_scope
from app.ratelimit import (
    AUTH_FAILURES_PER_IP,
    LOGIN_FAILURES_PER_ACCOUNT,
    LOGIN_FAILURES_PER_IP,
    RateLimited,
    Rule,
    client_ip,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/auth", tags=["auth"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 5.1: token responses are never cached


class TokenOut(BaseModel):
    access_token: str = Field(description="Send as `Authorization: Bearer <token>`; lasts `expires_in` seconds.")
    refresh_token: str = Field(description="Good for one use at POST /auth/refresh, which returns the next one.")
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="Seconds the access token lasts.")


class RefreshIn(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class PasswordIn(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024, description="At least 12 characters.")


class AcceptIn(BaseModel):
    token: str = Field(min_length=1, max_length=200, description="The invitation's token, from the admin.")
    password: str = Field(min_length=1, max_length=1024, description="Your account's password if this email "
                          "already has one; otherwise the new account's password (at least 12 characters).")


class MeOut(BaseModel):
    user_id: str
    email: str
    tenant: str = Field(description="The slug of the tenant this login is for.")
    role: str = Field(description="owner | admin | agent | viewer")


def _limited(request: Request, *checks: tuple[Rule, str]) -> None:
    limiter = services_of(request).rate_limiter
    try:
        for rule, identity in checks:
            limiter.check(rule, identity)
    except RateLimited as exc:
        raise exc.http() from None


def _spend(request: Request, *checks: tuple[Rule, str]) -> None:
    limiter = services_of(request).rate_limiter
    try:
        for rule, identity in checks:
            limiter.hit(rule, identity)
    except RateLimited as exc:
        raise exc.http() from None


def _tokens(tokens: logins.Tokens, response: Response) -> TokenOut:
    response.headers.update(NO_STORE)
    return TokenOut(access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                    expires_in=tokens.expires_in)


def _error(exc: service.AccountError) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return HTTPException(exc.status, exc.message, headers=headers)


@router.post("/login", response_model=TokenOut, summary="Log in (OAuth2 password flow)", responses={
    401: {"description": "Wrong email or password (one message for both)."},
    403: {"description": "The account has no access to that tenant."},
    409: {"description": "The account belongs to several tenants: send `tenant`."},
    429: {"description": "Too many failed logins for this account or from this address: see Retry-After."},
})
def login(
    request: Request,
    response: Response,
    username: Annotated[str, Form(max_length=400, description="The person's email.")],
    password: Annotated[str, Form(max_length=1024)],
    tenant: Annotated[str | None, Form(max_length=64, description="Tenant slug; needed when the person belongs "
                                                                  "to several tenants.")] = None,
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
) -> TokenOut:
    """Exchange an email and password for an access token and a refresh token, for one tenant."""
    account = username.strip().lower()
    failures = ((LOGIN_FAILURES_PER_IP, client_ip(request)), (LOGIN_FAILURES_PER_ACCOUNT, account))
    _limited(request, *failures)
    try:
        with session_scope(cross_tenant="a person's logins across tenants") as session:
            return _tokens(logins.login(session, username, password, tenant or None), response)
    except service.LoginFailed as exc:
        log.info("failed login from %s", client_ip(request))
        _spend(request, *failures)
        raise _error(exc) from None
    except service.AccountError as exc:
        raise _error(exc) from None


@router.post("/refresh", response_model=TokenOut, summary="Get a new access token", responses={
    401: {"description": "Unknown, expired or already used refresh token (a reused one ends its login)."},
})
def refresh(request: Request, response: Response, body: RefreshIn) -> TokenOut:
    """Spend the refresh token for a new pair. Each refresh token works once: presenting a spent one again
    revokes the whole login (it may have been copied), and every token of that login stops working."""
    ip = (AUTH_FAILURES_PER_IP, client_ip(request))
    _limited(request, ip)
    try:
        with session_scope(cross_tenant="a person's logins across tenants") as session:
            return _tokens(logins.refresh(session, body.refresh_token), response)
    except service.RefreshReused as exc:
        # The refresh's own transaction was rolled back: revoke in a new one.
        with session_scope(cross_tenant="a person's logins across tenants") as session:
            logins.revoke_login(session, exc.session_id, "refresh_reused", actor="system")
        raise _error(exc) from None
    except service.UnknownRefreshToken as exc:
        _spend(request, ip)  # guessing; an expired or revoked token of ours is ordinary use
        raise _error(exc) from None
    except service.AccountError as exc:
        raise _error(exc) from None


@router.post("/logout", status_code=204, summary="Log out", responses={
    401: {"description": "Neither an access token nor a refresh token was sent."},
})
def logout(
    request: Request,
    body: RefreshIn | None = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """End this login: its refresh token and its access tokens stop working at once. Send the access token
    (`Authorization: Bearer`), or, once it has expired, the refresh token in the body. Idempotent."""
    token = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else ""
    if looks_like_jwt(token):
        principal = authenticate(request, authorization)
        if principal.session_id is not None:
            with session_scope(tenant=principal.tenant_id) as session:
                logins.revoke_login(session, principal.session_id, "logout")
    elif body is not None:
        with session_scope(cross_tenant="a person's logins across tenants") as session:
            logins.logout_with_refresh(session, body.refresh_token)
    else:
        raise HTTPException(401, "send the access token (Authorization: Bearer) or the refresh token to log out",
                            headers={"WWW-Authenticate": "Bearer"})
    return Response(status_code=204)


@router.get("/me", response_model=MeOut, summary="Who is logged in", responses={
    403: {"description": "Called with an API key: keys are not people."},
})
def me(principal: Viewer) -> MeOut:
    """The person this access token belongs to, the tenant it is for, and their role there now."""
    if principal.user_id is None or principal.role is None:
        raise HTTPException(403, "GET /auth/me describes a logged-in person; an API key or the operator token has "
                                 "none: log in at POST /auth/login")
    return MeOut(user_id=principal.user_id, email=principal.name, tenant=principal.tenant_slug, role=principal.role)


@router.post("/password", status_code=204, summary="Change my password", responses={
    403: {"description": "The current password is wrong, or the caller is an API key."},
    422: {"description": "The new password is too short or too long."},
})
def change_password(request: Request, body: PasswordIn, principal: Viewer) -> Response:
    """Change the logged-in person's password (for example the initial one an admin chose). Every other login
    of theirs, in every tenant, ends; this one goes on."""
    account = (LOGIN_FAILURES_PER_ACCOUNT, principal.name)  # a stolen access token must not test passwords freely
    _limited(request, account)
    try:
        with session_scope(cross_tenant="a person's logins across tenants") as session:
            logins.change_password(session, principal, body.current_password, body.new_password)
    except service.WrongPassword as exc:
        _spend(request, account)
        raise _error(exc) from None
    except service.AccountError as exc:
        raise _error(exc) from None
    return Response(status_code=204)


@router.post("/invitations/accept", response_model=TokenOut, summary="Accept an invitation", responses={
    401: {"description": "The email already has an account and this is not its password."},
    404: {"description": "Unknown, used, withdrawn or expired invitation."},
    422: {"description": "A new account's password is too short or too long."},
    429: {"description": "Too many failures for this account or from this address: see Retry-After."},
})
def accept_invitation(request: Request, response: Response, body: AcceptIn) -> TokenOut:
    """Join the tenant you were invited to, and log into it. If the invited email already has an account (you
    work for another tenant too), send that account's password; otherwise the password you send becomes your new
    account's. Failures count like failed logins."""
    ip = (LOGIN_FAILURES_PER_IP, client_ip(request))
    _limited(request, ip)
    failures: tuple[tuple[Rule, str], ...] = (ip,)
    try:
        with session_scope(cross_tenant="invitation acceptance by token") as session:
            invitation = invitations.find(session, body.token)
            failures = (ip, (LOGIN_FAILURES_PER_ACCOUNT, invitation.email))
            _limited(request, *failures)
            joined = invitations.accept(session, invitation, body.password)
            return _tokens(logins.start(session, joined.user_id, joined.tenant_id), response)
    except (service.LoginFailed, invitations.InvitationRefused) as exc:
        _spend(request, *failures)
        raise _error(exc) from None
    except service.AccountError as exc:
        raise _error(exc) from None

"""API keys: `sb_<prefix>_<secret>`, stored as SHA-256, scoped `admin` (everything in its tenant) or `agent`
(the review queue and conversations). A key only ever sees its own tenant. The same `Authorization: Bearer`
header also takes a person's access token (app/accounts): owners and admins act as `admin`, agents as `agent`,
viewers may only read.

Embedded `serve` also writes an operator token to `$SWITCHBOARD_HOME/server.json` (mode 0600) so the local CLI
can act for any tenant on that machine while the server holds the embedded vector store's lock.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import logs
from app.accounts.tokens import looks_like_jwt
from app.api.services import services_of
from app.crypto import secrets_equal
from app.db import SQLITE_BUSY_MS, open_session
from app.models import ApiKey, Tenant, utcnow
from app.ratelimit import AUTH_FAILURES_PER_IP, AUTH_FAILURES_PER_KEY, RateLimited, RateLimiter, client_ip

log = logging.getLogger(__name__)
SCOPES = ("admin", "agent")
LAST_USED_RESOLUTION = timedelta(minutes=1)
TOUCH_WAIT_MS = 200


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """Returns (plaintext key, prefix). The plaintext is shown once and never stored."""
    prefix = secrets.token_hex(4)
    return f"sb_{prefix}_{secrets.token_urlsafe(24)}", prefix


def issue_key(session: Session, tenant_id: str, scope: str, name: str = "") -> tuple[ApiKey, str]:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    plaintext, prefix = new_api_key()
    row = ApiKey(tenant_id=tenant_id, scope=scope, name=name or scope, prefix=prefix, key_hash=hash_key(plaintext))
    session.add(row)
    session.flush()
    return row, plaintext


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    tenant_slug: str
    scope: str  # admin | agent | viewer (viewer: people only)
    key_id: str | None
    name: str  # a key's name, a person's email, or "operator"
    # A logged-in person (app/accounts): their id, their role in this tenant now, and their login.
    user_id: str | None = None
    role: str | None = None
    session_id: str | None = None

    @property
    def actor(self) -> str:
        """Who did it, in the audit log: `user:<id>` (a person), `operator` (the embedded server's operator
        token, also used by the local CLI) or `key:<api key id>`. Key names are chosen by tenant admins, so they
        never identify the actor."""
        if self.user_id is not None:
            return f"user:{self.user_id}"
        return "operator" if self.key_id is None else f"key:{self.key_id}"

    @property
    def label(self) -> str:
        """For people reading a review: a person's email, `operator`, or the key's scope and name (`agent:dana`)."""
        if self.user_id is not None:
            return self.name
        return "operator" if self.key_id is None else f"{self.scope}:{self.name}"

    @property
    def rank(self) -> str:
        """owner | admin | agent | viewer: a person's role; an API key's scope; the operator ranks as owner."""
        if self.role is not None:
            return self.role
        return "owner" if self.key_id is None else self.scope

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_switchboard_tenant: Annotated[str | None, Header()] = None,
) -> Principal:
    """The key's principal. Wrong keys are counted per client IP and per key (hashed); while either count is
    over its limit the caller gets 429 before any key is checked. A valid key never spends from these limits."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    token = authorization[7:].strip()
    failures = _Failures(services_of(request).rate_limiter, client_ip(request), hash_key(token))
    failures.check()
    if looks_like_jwt(token):
        return _person(token, failures)
    # The key names its tenant only once it is found: the lookup crosses tenants (by the key's hash, or by the slug
    # the operator token names).
    with open_session(cross_tenant="API-key lookup by hash") as session:
        # Only `serve` in embedded mode sets one (app/cli.py): the local CLI acts for any tenant through it.
        operator_token: str | None = getattr(request.app.state, "operator_token", None)
        if operator_token and secrets_equal(token, operator_token):
            if not x_switchboard_tenant:
                raise HTTPException(400, "the operator token needs an 'X-Switchboard-Tenant: <slug>' header")
            tenant = session.scalars(select(Tenant).where(Tenant.slug == x_switchboard_tenant)).first()
            if tenant is None:
                raise HTTPException(404, f"no tenant {x_switchboard_tenant!r}")
            logs.bind(tenant_id=tenant.id)
            return Principal(tenant.id, tenant.slug, "admin", None, "operator")
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == failures.key_hash)).first()
        if row is None or row.revoked_at is not None:
            # The key's public prefix at most (`sb_<prefix>_<secret>`): enough to recognise a revoked key.
            log.info("refused an %s API key (prefix %r) from %s", "unknown" if row is None else "revoked",
                     token[3:11] if token.startswith("sb_") else None, failures.ip)
            failures.spend()
            raise _unauthorized("invalid or revoked API key")
        tenant = session.get_one(Tenant, row.tenant_id)
        now = utcnow()
        last = row.last_used_at
        if last is None or now - (last if last.tzinfo else last.replace(tzinfo=UTC)) > LAST_USED_RESOLUTION:
            row.last_used_at = now  # at most one write a minute per key, not one per request
            _touch(session)
        logs.bind(tenant_id=tenant.id)
        return Principal(tenant.id, tenant.slug, row.scope, row.id, row.name)


def _touch(session: Session) -> None:
    """Commit the key's `last_used_at`, best-effort: it is informational, and on SQLite a long write (a knowledge
    ingestion holds the database's one write lock for its whole build) must not hold up or fail the request,
    e.g. the job status poll that watches that ingestion. SQLite waits at most TOUCH_WAIT_MS for the lock; the
    connection gets its usual wait back before it returns to the pool."""
    if session.get_bind().dialect.name != "sqlite":
        session.commit()
        return
    connection = session.connection()
    connection.exec_driver_sql(f"PRAGMA busy_timeout={TOUCH_WAIT_MS}")
    try:
        session.flush()  # in WAL mode the write lock is taken here, at the UPDATE
        written = True
    except OperationalError:
        written = False
        log.debug("API key last-use time not recorded: the database is busy")
    finally:
        connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    if written:
        session.commit()
    else:
        session.rollback()


def _person(token: str, failures: _Failures) -> Principal:
    """A logged-in person's access token (app/accounts/tokens.py); the login and the role are read now."""
    from app.accounts.logins import principal_for
    from app.accounts.tokens import read_access
    from app.keys import TokenError

    try:
        claims = read_access(token)
    except TokenError as exc:
        if not exc.expired:  # a forged or foreign token; an expired one is ordinary use
            failures.spend()
        raise _unauthorized(str(exc)) from None
    with open_session(tenant=claims.tenant_id) as session:
        principal = principal_for(session, claims)
    if principal is None:
        raise _unauthorized("this login has ended (logged out, revoked, or removed from the tenant): log in again")
    logs.bind(tenant_id=principal.tenant_id)
    return principal


@dataclass(frozen=True)
class _Failures:
    limiter: RateLimiter
    ip: str
    key_hash: str

    def check(self) -> None:
        limiter = self.limiter
        try:
            limiter.check(AUTH_FAILURES_PER_IP, self.ip)
            limiter.check(AUTH_FAILURES_PER_KEY, self.key_hash)
        except RateLimited as exc:
            raise exc.http() from None

    def spend(self) -> None:
        limiter = self.limiter
        try:
            limiter.hit(AUTH_FAILURES_PER_IP, self.ip)
            limiter.hit(AUTH_FAILURES_PER_KEY, self.key_hash)
        except RateLimited as exc:
            raise exc.http() from None


def require_agent(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """Admin keys and people may do everything an agent may; viewers only read."""
    if principal.scope == "viewer":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="viewers can read but not act: this needs the agent "
                                                              "role or above")
    return principal


def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail="this route needs an admin-scoped API key or an owner's or admin's login")
    return principal


Viewer = Annotated[Principal, Depends(authenticate)]  # anyone of the tenant: read-only routes
Agent = Annotated[Principal, Depends(require_agent)]
Admin = Annotated[Principal, Depends(require_admin)]

"""Web chat visitor sessions: the server picks each visitor's contact id and signs a short-lived token for it.

A token is a JWT (HS256) whose subject is the contact id, with the widget as audience, the tenant, the issue
time and an expiry (WIDGET_SESSION_TTL_S, 24 h by default). Its holder renews it by presenting it to
`POST /widget/v1/{widget_id}/sessions`, until WIDGET_SESSION_RENEW_GRACE_S after it expired; a visitor without
a token gets a new contact id. Nothing else yields a token for a contact, so knowing a visitor's id (agents see
it) is not enough to read or write their conversation. Tokens are not stored: a renewed token does not revoke
the one it replaced (both end at their own expiry). Tokens are signed under the keyring's first signing key (a
sub-key of its own, named by the `kid` header) and verified under any of its signing keys, so a key rotation
ends no session (app/keys.py); removing a signing key from the keyring ends the sessions it signed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from app import keys
from app.config import get_settings
from app.keys import TokenError

ALGORITHM = "HS256"
ISSUER = "switchboard/webchat"
# Server-issued ids are URL-safe base64: no ':' (provider message ids are `<contact>:<client message id>`).
CONTACT_PREFIX = "v_"


@dataclass(frozen=True)
class IssuedSession:
    contact_id: str
    token: str
    expires_at: datetime
    expires_in: int


@dataclass(frozen=True)
class Visitor:
    contact_id: str
    tenant_id: str


def new_contact_id() -> str:
    return CONTACT_PREFIX + secrets.token_urlsafe(16)


def derive(signing_key: bytes) -> bytes:
    # A key of its own, derived from a signing key: a widget token never doubles as anything else it signs.
    return hmac.new(signing_key, b"switchboard webchat session v1", hashlib.sha256).digest()


def _keys() -> list[tuple[str, bytes]]:
    """(kid, key) of every key that verifies, the one that signs first."""
    return keys.sub_keys(derive)


def _audience(widget_id: str) -> str:
    return f"widget:{widget_id}"


def issue(widget_id: str, tenant_id: str, contact_id: str, *, now: datetime | None = None) -> IssuedSession:
    """A token for `contact_id` on this widget. Callers decide who may have one: see the module docstring."""
    ttl = get_settings().widget_session_ttl_s
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    expires = issued + timedelta(seconds=ttl)
    claims = {"iss": ISSUER, "aud": _audience(widget_id), "sub": contact_id, "tid": tenant_id,
              "iat": issued, "exp": expires}
    kid, key = _keys()[0]
    return IssuedSession(contact_id, jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid}), expires, ttl)


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} s"


# A visitor presents the same token with every send and read: a token verified in the last VERIFIED_TTL_S is
# taken from here, until its own expiry, while the key that verified it is still in the keyring. So removing a
# signing key from the keyring ends the sessions it signed at this process's next keyring reload (app/keys.py,
# RELOAD_S), not a cache lifetime later, and a rotation (which only adds a first key) keeps every entry. Only
# successes are kept; renewal (with its grace period) always decodes.
VERIFIED_TTL_S = 60.0
VERIFIED_MAX = 10_000
# (widget, token) -> (cached until, exp, visitor, the sub-keys it may have been verified under)
_verified: dict[tuple[str, str], tuple[float, int, Visitor, tuple[bytes, ...]]] = {}
_verified_lock = threading.Lock()


def verify(widget_id: str, token: str, *, renewing: bool = False) -> Visitor:
    """The visitor a token of this widget names, or TokenError. `renewing` accepts a token up to
    WIDGET_SESSION_RENEW_GRACE_S past its expiry."""
    cache_key = (widget_id, token)
    ring = _keys()
    now = time.time()
    if not renewing:
        hit = _verified.get(cache_key)
        if hit is not None and now < hit[0] and now < hit[1] and _all_kept(hit[3], ring):
            return hit[2]
    visitor, expires = _decode(widget_id, token, renewing, ring)
    if not renewing:
        with _verified_lock:
            if len(_verified) >= VERIFIED_MAX:
                _verified.clear()
            _verified[cache_key] = (now + VERIFIED_TTL_S, expires, visitor, _verifiers(token, ring))
    return visitor


def _verifiers(token: str, ring: list[tuple[str, bytes]]) -> tuple[bytes, ...]:
    # The keys keys.decode_jwt tried for this token: the one its `kid` names, or (no such kid: a token from before
    # kids) every key, all of which must then stay for the cached entry to count.
    kid = jwt.get_unverified_header(token).get("kid")
    return tuple(key for name, key in ring if name == kid) or tuple(key for _, key in ring)


def _all_kept(verifiers: tuple[bytes, ...], ring: list[tuple[str, bytes]]) -> bool:
    return all(any(key == kept for _, kept in ring) for key in verifiers)


def _decode(widget_id: str, token: str, renewing: bool, ring: list[tuple[str, bytes]]) -> tuple[Visitor, int]:
    settings = get_settings()
    sessions_url = f"POST /widget/v1/{widget_id}/sessions"
    leeway = settings.widget_session_renew_grace_s if renewing else 0
    if not token.isascii():  # a JWT is ASCII; anything else (a lone surrogate) must not reach the decoder
        raise TokenError(f"invalid session token for this widget: start a session with {sessions_url}")
    try:
        claims = keys.decode_jwt(
            token, ring, algorithms=[ALGORITHM], audience=_audience(widget_id), issuer=ISSUER, leeway=leeway,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        if renewing:
            raise TokenError(
                f"this session expired more than {_duration(settings.widget_session_renew_grace_s)} ago and can no "
                f"longer be renewed: start a new session with {sessions_url} without a token", expired=True,
            ) from None
        raise TokenError(
            f"session token expired: renew it with {sessions_url}, sending the token as "
            "'Authorization: Bearer <token>' (or start a new session without one)", expired=True,
        ) from None
    except jwt.InvalidTokenError:
        raise TokenError(f"invalid session token for this widget: start a session with {sessions_url}") from None
    contact_id, tenant_id = claims.get("sub"), claims.get("tid")
    if not isinstance(contact_id, str) or not contact_id.startswith(CONTACT_PREFIX) or not isinstance(tenant_id, str):
        raise TokenError(f"invalid session token for this widget: start a session with {sessions_url}")
    return Visitor(contact_id, tenant_id), int(claims["exp"])

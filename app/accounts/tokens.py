"""Access tokens (JWT, HS256) and refresh tokens (opaque random strings stored hashed).

The signing key is SWITCHBOARD_TOKEN_KEY when set; otherwise a 32-byte sub-key derived from the keyring's first
signing key with HKDF-SHA256 under its own label (app/keys.py), so it is never a key that encrypts credentials,
nor the web chat's session key. The `kid` header names the key by a short digest; a token signed under an older
signing key still verifies until it expires, so rotating the keys logs nobody out.

An access token names the user (`sub`), the tenant (`tid`) and the login (`sid`); it says nothing about the
role. Every request reads the role, and whether the login still stands, from the database, so a logout, a role
change or a removal takes effect at once, not when the token expires.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app import keys
from app.config import get_settings
from app.keys import TokenError

ALGORITHM = "HS256"
ISSUER = "switchboard"
AUDIENCE = "switchboard/api"
HKDF_INFO = b"switchboard access tokens v1"


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    tenant_id: str
    session_id: str


def derive(signing_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(signing_key)


def _keys() -> list[tuple[str, bytes]]:
    """(kid, key) of every key that verifies, the one that signs first."""
    token_key = get_settings().token_key
    if token_key:  # the keyring is only read (or created) when no token key is set
        return [(hashlib.sha256(token_key.encode()).hexdigest()[:16], token_key.encode())]
    return keys.sub_keys(derive)


def _key() -> tuple[bytes, str]:
    """(key, kid) that signs."""
    kid, key = _keys()[0]
    return key, kid


def looks_like_jwt(token: str) -> bool:
    """API keys are `sb_<prefix>_<secret>`; a JWT is three base64url parts, the first a JSON object (`eyJ`)."""
    return token.startswith("eyJ") and token.count(".") == 2


def issue_access(claims: AccessClaims, now: datetime) -> tuple[str, int]:
    """(token, seconds it lasts)."""
    ttl = get_settings().access_token_ttl_s
    key, kid = _key()
    issued = now.replace(microsecond=0)
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": claims.user_id, "tid": claims.tenant_id,
               "sid": claims.session_id, "iat": issued, "exp": issued + timedelta(seconds=ttl),
               "jti": secrets.token_urlsafe(12)}  # two tokens issued in the same second still differ
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"kid": kid}), ttl


def read_access(token: str) -> AccessClaims:
    try:
        payload = keys.decode_jwt(token, _keys(), algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                                  options={"require": ["exp", "iat", "sub", "aud", "iss"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("the access token has expired: get a new one from POST /auth/refresh", expired=True) from None
    except jwt.InvalidTokenError:
        raise TokenError("invalid access token") from None
    values = [payload.get(claim) for claim in ("sub", "tid", "sid")]
    if not all(isinstance(v, str) and v for v in values):
        raise TokenError("invalid access token")
    return AccessClaims(*map(str, values))


def new_refresh_token() -> tuple[str, str]:
    """(token, its hash to store). 256 random bits: a plain SHA-256 is enough to store it (no guessing)."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

"""Meta webhook authenticity (WhatsApp Cloud API, Instagram, Messenger): pure functions.

`X-Hub-Signature-256: sha256=<hex>` is HMAC-SHA256 of the raw request body, exactly as received, keyed with the
app secret. Compare in constant time; never re-serialise the JSON before hashing.
"""

from __future__ import annotations

import hashlib
import hmac

from app.crypto import secrets_equal


def signature_valid(app_secret: str, raw_body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return secrets_equal(header.removeprefix("sha256=").strip().lower(), expected)


def handshake_ok(mode: str | None, token: str | None, configured_tokens: list[str]) -> bool:
    """The `hub.challenge` GET: subscribe mode and a verify token that matches one configured account."""
    if mode != "subscribe" or not token:
        return False
    # Check every candidate so the time taken does not say which one matched.
    return any([secrets_equal(token, t) for t in configured_tokens if t])

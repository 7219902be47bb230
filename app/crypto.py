"""Secrets at rest: channel credentials, tenants' LLM keys and webhook secrets are Fernet-encrypted with the
keyring's first encryption key, and decrypted with any of its keys (app/keys.py)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from cryptography.fernet import InvalidToken

from app import keys


def encrypt_json(data: dict[str, Any]) -> str:
    return keys.current().fernet.encrypt(json.dumps(data).encode()).decode()


def decrypt_json(token: str) -> dict[str, Any]:
    try:
        return json.loads(keys.current().fernet.decrypt(token.encode()))
    except InvalidToken as exc:
        raise RuntimeError(
            "cannot decrypt stored credentials: none of the encryption keys is the one they were saved with "
            "(restore the keyring or SWITCHBOARD_ENCRYPTION_KEYS from your backup)"
        ) from exc


def secrets_equal(given: str | bytes | None, expected: str | bytes) -> bool:
    """Constant-time comparison of a presented secret (header, token, signature) with the expected one.
    Compares UTF-8 bytes: `hmac.compare_digest` raises TypeError on non-ASCII str, which would turn a wrong
    credential into a 500. Never raises; a missing or empty `given` never matches."""
    if not given:
        return False
    a = given.encode("utf-8", "surrogatepass") if isinstance(given, str) else given
    b = expected.encode("utf-8", "surrogatepass") if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)

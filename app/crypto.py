"""Secrets at rest: channel credentials and tenants' LLM keys are Fernet-encrypted with SWITCHBOARD_SECRET_KEY."""

from __future__ import annotations

import hmac
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from app.config import get_settings


def _fernet() -> Fernet:
    return Fernet(get_settings().effective_secret_key.encode())


def encrypt_json(data: dict[str, Any]) -> str:
    return _fernet().encrypt(json.dumps(data).encode()).decode()


def decrypt_json(token: str) -> dict[str, Any]:
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken as exc:
        raise RuntimeError(
            "cannot decrypt stored credentials: SWITCHBOARD_SECRET_KEY differs from the key they were saved with"
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

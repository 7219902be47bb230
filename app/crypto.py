"""Secrets at rest: channel credentials and tenants' LLM keys are Fernet-encrypted with SWITCHBOARD_SECRET_KEY."""

from __future__ import annotations

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

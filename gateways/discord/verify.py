"""Discord interaction signatures: Ed25519 over `X-Signature-Timestamp + raw body` with the application's
public key, and a timestamp close to now, so a captured request cannot be replayed later (pure)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def signature_valid(public_key_hex: str, timestamp: str | None, raw_body: bytes, signature_hex: str | None) -> bool:
    if not timestamp or not signature_hex or not public_key_hex:
        return False
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(signature_hex), timestamp.encode() + raw_body)
    except (ValueError, InvalidSignature):
        return False
    return True


MAX_SKEW_S = 300


def timestamp_fresh(timestamp: str | None, now: float, max_skew_s: float = MAX_SKEW_S) -> bool:
    """`X-Signature-Timestamp` (Unix seconds) is at most `max_skew_s` before or after `now`."""
    if not timestamp or not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(now - int(timestamp)) <= max_skew_s

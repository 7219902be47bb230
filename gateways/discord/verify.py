"""Discord interaction signatures: Ed25519 over `X-Signature-Timestamp + raw body` with the application's
public key (pure)."""

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

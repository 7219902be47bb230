from __future__ import annotations

from typing import Protocol


class ObjectStore(Protocol):
    """Raw knowledge files. Keys are always prefixed by the tenant id (`{tenant_id}/...`)."""

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> list[str]: ...

    def close(self) -> None: ...


class ObjectNotFound(KeyError):
    """`get` of a key that does not exist."""


def check_key(key: str) -> str:
    """Keys are relative, '/'-separated paths with no empty, '.' or '..' segments: a key can never name
    anything outside the store's root (a folder or a bucket), whatever a tenant's file was called."""
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key or (len(key) > 1 and key[1] == ":"):
        raise ValueError(f"object key {key!r} must be a relative '/'-separated path")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key

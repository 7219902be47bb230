from __future__ import annotations

from typing import Protocol


class ObjectStore(Protocol):
    """Raw knowledge files. Keys are always prefixed by the tenant id (`{tenant_id}/...`)."""

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> list[str]: ...

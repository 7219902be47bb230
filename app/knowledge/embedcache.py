"""Dense vectors of a document, cached in the object store so a new pack version does not embed an unchanged
document again.

The key is a hash of the embedder's name and the exact texts that were embedded, so anything that changes
what would be embedded (the file, the chunker, the chunk's text representation, the model) misses the cache
and embeds afresh; nothing stale can be served. The blob is the vectors as little-endian float32 (what Qdrant
stores anyway), row after row.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from app.providers.storage.base import ObjectNotFound, ObjectStore


def cache_key(tenant_id: str, embedder_name: str, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(embedder_name.encode())
    for text in texts:
        digest.update(b"\x00" + hashlib.sha256(text.encode()).digest())
    return f"{tenant_id}/knowledge/vectors/{digest.hexdigest()}.f32"


def companion_key(key: str, texts: Sequence[str]) -> str:
    """Where another view of the document (e.g. its FAQ questions alone) is cached: under the main key's name,
    so deleting the main blob can find it (`companion_prefix`), and keyed by its own texts, so a change in how
    that view is written misses the cache like any other change."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(b"\x00" + hashlib.sha256(text.encode()).digest())
    return f"{companion_prefix(key)}{digest.hexdigest()[:32]}.f32"


def companion_prefix(key: str) -> str:
    return key.removesuffix(".f32") + ".view-"


def load(objects: ObjectStore, key: str, rows: int, dim: int) -> list[list[float]] | None:
    """The cached vectors, or None when absent or not the expected shape (then the caller embeds)."""
    try:
        blob = objects.get(key)
    except (ObjectNotFound, KeyError):
        return None
    if len(blob) != rows * dim * 4:
        return None
    flat = struct.unpack(f"<{rows * dim}f", blob)
    return [list(flat[i * dim : (i + 1) * dim]) for i in range(rows)]


def save(objects: ObjectStore, key: str, vectors: Sequence[Sequence[float]]) -> None:
    flat = [x for row in vectors for x in row]
    objects.put(key, struct.pack(f"<{len(flat)}f", *flat), "application/octet-stream")

"""Deterministic ids: the same chunk of the same file in the same pack version always gets the same id, so a
re-run of an ingestion overwrites its own points instead of adding copies; and a passage text's digest, its key
in `passage_vectors`."""

from __future__ import annotations

import hashlib
import uuid

# Fixed forever: changing it would orphan every stored vector.
NAMESPACE = uuid.UUID("6f1d7c1e-5b7a-4d8e-9a51-2f0c3b9e8d42")


def chunk_id(tenant_id: str, pack_version: int, document_path: str, ordinal: int) -> str:
    if not tenant_id:
        raise ValueError("tenant_id is required")
    # NUL cannot appear in any of the parts, so distinct tuples never join into the same name.
    name = "\x00".join((tenant_id, str(int(pack_version)), document_path, str(int(ordinal))))
    return str(uuid.uuid5(NAMESPACE, name))


def passage_digest(text: str) -> str:
    """A passage text's key for its kept grounding vectors (app/assistant/passage_units.py): the same in every
    process, unlike `hash()`."""
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()

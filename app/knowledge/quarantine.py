"""Quarantine of knowledge chunks that look like indirect prompt injection.

A knowledge file can carry text addressed to the assistant instead of the reader ("ignore your previous
instructions", "note to the AI: tell customers..."); retrieved, it would reach the LLM as trusted context. At
ingestion every chunk is scanned with the same detector and threshold as the customer's messages
(app/assistant/injection.py, the tenant's `injection_threshold`). A flagged chunk is *held*: its Chunk row keeps
the text and the reason, and it gets no vector point, so retrieval cannot return it. Admins see held chunks
(admin API `GET /admin/knowledge/quarantine`, `switchboard pack quarantine`) and may release one after reading
it: it is then indexed in its version and marked reviewed, so the answer-time scan lets it through. A release
follows the chunk into later versions while its text is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.assistant import injection
from app.knowledge.chunk import TextChunk
from app.knowledge.representation import embed_chunks
from app.models import Chunk, Document, Tenant, utcnow

if TYPE_CHECKING:
    from app.knowledge.indexing import Deps

HELD, RELEASED = "held", "released"


class QuarantineError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def tenant_threshold(tenant: Tenant) -> float | None:
    value = (tenant.policies or {}).get("injection_threshold")
    return None if value is None else float(value)


def verdict_for(chunk: TextChunk, threshold: float | None, prior: tuple[str, dict[str, Any] | None] | None
                ) -> dict[str, Any] | None:
    """The quarantine record of a chunk being written: None when clean; a release of the same text carries."""
    if prior is not None and prior[0] == chunk.text and is_released(prior[1]):
        return prior[1]
    verdict = injection.passage_verdict(chunk.embedding_text(), threshold)
    if not verdict.flagged:
        return None
    return {"status": HELD, "reason": injection.reason(verdict), "score": verdict.score, "rules": verdict.rules,
            "threshold": verdict.threshold}


def is_held(record: dict[str, Any] | None) -> bool:
    return bool(record) and record.get("status") == HELD  # type: ignore[union-attr]


def is_released(record: dict[str, Any] | None) -> bool:
    return bool(record) and record.get("status") == RELEASED  # type: ignore[union-attr]


def count_held(session: Session, tenant_id: str, version: int) -> int:
    rows = session.execute(
        select(Chunk.quarantine).join(Document, Document.id == Chunk.document_id)
        .where(Chunk.tenant_id == tenant_id, Document.tenant_id == tenant_id, Document.pack_version == version,
               Chunk.quarantine.is_not(None))
    )
    return sum(is_held(r.quarantine) for r in rows)


def listing(session: Session, tenant_id: str, version: int | None = None, *, include_released: bool = False
            ) -> list[dict[str, Any]]:
    """Quarantined chunks of the tenant (of one pack version, else of its live one), with the reason."""
    if version is None:
        tenant = session.get(Tenant, tenant_id)
        version = tenant.live_pack_version if tenant is not None else None
        if version is None:
            return []
    rows = session.execute(
        select(Chunk, Document.path, Document.pack_version).join(Document, Document.id == Chunk.document_id)
        .where(Chunk.tenant_id == tenant_id, Document.tenant_id == tenant_id, Document.pack_version == version,
               Chunk.quarantine.is_not(None))
        .order_by(Document.path, Chunk.ordinal)
    )
    out = []
    for chunk, path, pack_version in rows:
        q = chunk.quarantine or {}
        if q.get("status") == HELD or (include_released and q.get("status") == RELEASED):
            out.append({"chunk_id": chunk.id, "document": path, "pack_version": pack_version,
                        "ordinal": chunk.ordinal, "heading": chunk.heading, "text": chunk.text, **q})
    return out


def release(session: Session, tenant_id: str, chunk_id: str, actor: str, deps: Deps) -> dict[str, Any]:
    """Index a held chunk after an admin read it: its vector point is written (marked reviewed) and its record
    says who released it. Only the tenant's own chunks; releasing twice is refused with 409."""
    from app.knowledge.indexing import point

    chunk = session.get(Chunk, chunk_id)
    if chunk is None or chunk.tenant_id != tenant_id:
        raise QuarantineError(f"no chunk {chunk_id!r} in this tenant's knowledge", 404)
    if not is_held(chunk.quarantine):
        raise QuarantineError(f"chunk {chunk_id!r} is not held in quarantine (status "
                              f"{(chunk.quarantine or {}).get('status', 'clean')})", 409)
    document = session.get_one(Document, chunk.document_id)
    d = deps
    text_chunk = TextChunk(chunk.ordinal, chunk.heading, chunk.text)
    vectors = embed_chunks([text_chunk], document.kind or "", d.embedder, d.sparse)[0]
    d.vectors.upsert(tenant_id, [point(document, chunk.id, text_chunk, vectors.dense, vectors.question,
                                       vectors.sparse, released=True)])
    chunk.quarantine = {**(chunk.quarantine or {}), "status": RELEASED, "released_by": actor,
                        "released_at": utcnow().isoformat()}
    session.flush()
    return {"chunk_id": chunk.id, "document": document.path, "pack_version": document.pack_version,
            **chunk.quarantine}

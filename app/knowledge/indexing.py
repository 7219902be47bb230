"""Indexing one document of a pack version being built: its raw file stored, its chunks embedded (or taken from
the embedding cache), upserted as vector points and written as Chunk rows. Every write is keyed so a rerun
writes the same thing again (app/knowledge/service.py runs the pack; this is one document of it)."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.knowledge import embedcache, quarantine
from app.knowledge.chunk import TextChunk
from app.knowledge.ids import chunk_id
from app.knowledge.parse import ParsedDocument, ParseError, SourceFile
from app.knowledge.representation import question_vectors
from app.models import Chunk, Document, new_id
from app.providers.embeddings.base import Embedder, SparseEncoder, SparseVector
from app.providers.storage.base import ObjectStore
from app.providers.vectors.base import ChunkPoint, VectorStore

EMBED_GROUP = 64  # chunks embedded and upserted together; the embedder batches further inside


@dataclass
class Deps:
    embedder: Embedder
    sparse: SparseEncoder
    vectors: VectorStore
    objects: ObjectStore


def deps(
    embedder: Embedder | None = None,
    sparse_encoder: SparseEncoder | None = None,
    vector_store: VectorStore | None = None,
    object_store: ObjectStore | None = None,
) -> Deps:
    from app import runtime

    return Deps(
        embedder=embedder or runtime.get_embedder(),
        sparse=sparse_encoder or runtime.get_sparse_encoder(),
        vectors=vector_store or runtime.get_vector_store(),
        objects=object_store or runtime.get_object_store(),
    )


def object_key(tenant_id: str, pack_version: int, path: str) -> str:
    """Where a raw file is stored: under the version that first brought this content (later versions that
    carry it forward point at the same object)."""
    return f"{tenant_id}/knowledge/v{pack_version}/{path}"


def _dense(d: Deps, tenant_id: str, texts: list[str], key: str | None = None) -> tuple[str, list[list[float]], int]:
    """(cache key, vectors, how many texts were embedded now)."""
    key = key or embedcache.cache_key(tenant_id, d.embedder.name, texts)
    cached = embedcache.load(d.objects, key, len(texts), d.embedder.dim)
    if cached is not None:
        return key, cached, 0
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBED_GROUP):
        vectors.extend(d.embedder.embed_documents(texts[start : start + EMBED_GROUP]))
    embedcache.save(d.objects, key, vectors)
    return key, vectors, len(texts)


def point(document: Document, point_id: str, c: TextChunk, dense: list[float], question: list[float] | None,
          sparse: SparseVector, released: bool = False) -> ChunkPoint:
    """The vector point of one chunk of `document`."""
    payload_meta = {k: v for k, v in (document.meta or {}).items() if k in ("brand", "category", "language",
                                                                             "source_url")}
    payload = {
        **payload_meta,
        "document": document.path,
        "document_id": document.id,
        "chunk_id": point_id,
        "heading": c.heading,
        "text": c.text,
        "title": document.title,
        "pack_version": document.pack_version,
        "kind": document.kind,
    }
    if released:
        payload["injection_released"] = True
    return ChunkPoint(id=point_id, tenant_id=document.tenant_id, dense=dense, sparse=sparse, question=question,
                      payload=payload)


def _write(
    session: Session, d: Deps, document: Document, chunks: list[TextChunk], threshold: float | None = None,
    prior: dict[int, tuple[str, dict[str, Any] | None]] | None = None,
) -> int:
    """Vectors (cached or embedded) and Chunk rows for a flushed Document of the version being built. A chunk
    the injection scan flags is quarantined: its row says why and it gets no vector point (app/knowledge/
    quarantine.py). `prior` ({ordinal: (text, quarantine)}) carries an admin's release of an unchanged chunk."""
    tenant_id, version = document.tenant_id, document.pack_version
    texts = [c.embedding_text() for c in chunks]
    held = [quarantine.verdict_for(c, threshold, (prior or {}).get(c.ordinal)) for c in chunks]
    document.vectors_key, dense, embedded = _dense(d, tenant_id, texts)
    # FAQ chunks get a second dense view, their question alone (app/knowledge/representation.py), cached alike.
    # Cached beside the document's vectors (a companion key), so deleting the document deletes both.
    vectors_key = document.vectors_key
    questions = question_vectors(
        chunks, document.kind or "",
        lambda qs: _dense(d, tenant_id, qs, embedcache.companion_key(vectors_key, qs))[1],
    )
    ids = [chunk_id(tenant_id, version, document.path, c.ordinal) for c in chunks]
    for start in range(0, len(chunks), EMBED_GROUP):
        group = chunks[start : start + EMBED_GROUP]
        sparse = d.sparse.encode_documents(texts[start : start + EMBED_GROUP])
        points = [
            point(document, ids[start + i], c, dense[start + i], questions[start + i], sparse[i],
                  released=quarantine.is_released(held[start + i]))
            for i, c in enumerate(group) if not quarantine.is_held(held[start + i])
        ]
        if points:
            d.vectors.upsert(tenant_id, points)
    session.add_all(
        Chunk(id=ids[i], tenant_id=tenant_id, document_id=document.id, ordinal=c.ordinal, heading=c.heading,
              text=c.text, token_estimate=round(c.words * 4 / 3), quarantine=held[i])
        for i, c in enumerate(chunks)
    )
    session.flush()
    return embedded


def prior_quarantine(session: Session, base: Document | None) -> dict[int, tuple[str, dict[str, Any] | None]]:
    """{ordinal: (text, quarantine)} of the chunks of a live document, so a new version keeps admins' releases."""
    if base is None:
        return {}
    rows = session.execute(select(Chunk.ordinal, Chunk.text, Chunk.quarantine).where(
        Chunk.tenant_id == base.tenant_id, Chunk.document_id == base.id))
    return {r.ordinal: (r.text, r.quarantine) for r in rows}


def index_document(
    session: Session,
    d: Deps,
    tenant_id: str,
    version: int,
    source_id: str,
    source_file: SourceFile,
    doc: ParsedDocument,
    chunks: list[TextChunk],
    base_doc: Document | None,
    threshold: float | None = None,
) -> int:
    content_hash = hashlib.sha256(source_file.data).hexdigest()
    if base_doc is not None and base_doc.content_hash == content_hash and base_doc.object_key:
        key = base_doc.object_key  # the same bytes are stored already
    else:
        key = object_key(tenant_id, version, doc.path)
        try:
            d.objects.put(key, source_file.data, mimetypes.guess_type(doc.path)[0])
        except ValueError as exc:  # a name the object store refuses (e.g. "C:" style)
            raise ParseError(f"file name not allowed: {exc}") from exc
    document = Document(
        id=new_id(), tenant_id=tenant_id, pack_version=version, path=doc.path, source_id=source_id,
        title=doc.title[:500], kind=doc.kind, content_hash=content_hash, object_key=key, meta=doc.meta,
        status="indexed",
    )
    session.add(document)
    prior = prior_quarantine(session, base_doc)
    session.flush()  # the Document row before its Chunk rows (no relationships to order the inserts)
    return _write(session, d, document, chunks, threshold, prior)


def carry_document(session: Session, d: Deps, version: int, source_id: str, base: Document,
                   threshold: float | None = None) -> tuple[int, int]:
    """Copy a live document into the new version: same file, same chunks, cached vectors, new point ids."""
    rows = list(session.scalars(select(Chunk).where(Chunk.tenant_id == base.tenant_id,
                                                    Chunk.document_id == base.id).order_by(Chunk.ordinal)))
    document = Document(
        id=new_id(), tenant_id=base.tenant_id, pack_version=version, path=base.path, source_id=base.source_id,
        title=base.title, kind=base.kind, content_hash=base.content_hash, object_key=base.object_key,
        meta=dict(base.meta or {}), status="indexed",
    )
    session.add(document)
    session.flush()
    chunks = [TextChunk(r.ordinal, r.heading, r.text) for r in rows]
    prior = {r.ordinal: (r.text, r.quarantine) for r in rows}
    return len(chunks), _write(session, d, document, chunks, threshold, prior)

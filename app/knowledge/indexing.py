"""Indexing one document of a pack version being built: its raw file stored, its chunks embedded (or taken from
the embedding cache), upserted as vector points and written as Chunk rows. Every write is keyed so a rerun
writes the same thing again (app/knowledge/service.py runs the pack; this is one document of it)."""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bus.base import Bus
from app.knowledge import embedcache, quarantine
from app.knowledge.chunk import TextChunk
from app.knowledge.ids import chunk_id
from app.knowledge.parse import ParsedDocument, ParseError, SourceFile
from app.knowledge.representation import question_text
from app.models import Chunk, Document, new_id
from app.providers.embeddings.base import Embedder, SparseEncoder, SparseVector
from app.providers.storage.base import ObjectStore
from app.providers.vectors.base import ChunkPoint, VectorStore

UPSERT_BATCH = 256  # points per vector-store upsert at most


@dataclass
class Deps:
    """What ingestion writes with (`Container.knowledge`): a test swaps one with `dataclasses.replace`."""

    embedder: Embedder
    sparse: SparseEncoder
    vectors: VectorStore
    objects: ObjectStore
    bus: Bus  # ingestion progress events
    by_passage: bool = False  # chunks with the same text under different headings share a vector (INGEST_DEDUPE)
    threads: int = 1  # threads calling the embedder at once (INGEST_THREADS)

    @property
    def cache_name(self) -> str:
        """The embedding cache's name for how vectors are made: the model, where it truncates, and whether a
        passage's vector may be another chunk's."""
        tokens = getattr(self.embedder, "max_tokens", 256)
        return self.embedder.name + (f"+t{tokens}" if tokens != 256 else "") + ("+passage" if self.by_passage else "")



def object_key(tenant_id: str, pack_version: int, path: str) -> str:
    """Where a raw file is stored: under the version that first brought this content (later versions that
    carry it forward point at the same object)."""
    return f"{tenant_id}/knowledge/v{pack_version}/{path}"


@dataclass(eq=False)
class Prepared:
    """One document of the version, parsed and chunked, its cached vectors looked up: what `write` needs once
    the texts the cache did not have are embedded (`to_embed`, in this order: full views, then questions)."""

    document: Document  # not yet added to the session
    chunks: list[TextChunk]
    texts: list[str]  # full views, as embedded
    questions: list[str | None]  # the question view of each chunk, None where it has none
    key: str  # the full views' cache key
    question_key: str | None  # the question views' cache key (None: no chunk has a question view)
    dense: list[list[float]] | None  # from the cache, or None: to embed
    question_dense: list[list[float]] | None
    held: list[dict[str, Any] | None]  # each chunk's quarantine record (app/knowledge/quarantine.py), None: clean
    data: bytes | None = None  # the raw file to store (None: stored already)
    weight: int = 0  # bytes of the upload this document accounts for (progress)

    @property
    def to_embed(self) -> list[str]:
        asked = [q for q in self.questions if q is not None]
        return (self.texts if self.dense is None else []) + (asked if self.question_dense is None else [])

    def keys(self, by_passage: bool) -> list[Hashable]:
        """What makes each text of `to_embed` the same as another for the embedder: the text itself, or with
        `by_passage` a full view's chunk text whatever its heading (the pipeline embeds each key once)."""
        full: list[Hashable] = [("passage", c.text) for c in self.chunks] if by_passage else list(self.texts)
        asked = [q for q in self.questions if q is not None]
        return (full if self.dense is None else []) + (asked if self.question_dense is None else [])


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


def _prepare(d: Deps, document: Document, chunks: list[TextChunk], data: bytes | None,
             threshold: float | None, prior: dict[int, tuple[str, dict[str, Any] | None]]) -> Prepared:
    """A chunk the injection scan flags is quarantined: its row says why and it gets no vector point (app/
    knowledge/quarantine.py). `prior` ({ordinal: (text, quarantine)}) carries an admin's release of an unchanged
    chunk. Held chunks are embedded all the same: the cache key covers every chunk of the document."""
    tenant_id = document.tenant_id
    texts = [c.embedding_text() for c in chunks]
    held = [quarantine.verdict_for(c, threshold, prior.get(c.ordinal)) for c in chunks]
    # FAQ chunks get a second dense view, their question alone (app/knowledge/representation.py), cached beside
    # the document's vectors (a companion key), so deleting the document deletes both.
    questions = [question_text(c, document.kind or "") for c in chunks]
    asked = [q for q in questions if q is not None]
    key = embedcache.cache_key(tenant_id, d.cache_name, texts)
    question_key = embedcache.companion_key(key, asked) if asked else None
    dense = embedcache.load(d.objects, key, len(texts), d.embedder.dim)
    question_dense = embedcache.load(d.objects, question_key, len(asked), d.embedder.dim) if question_key else []
    document.vectors_key = key
    return Prepared(document, chunks, texts, questions, key, question_key, dense, question_dense, held, data,
                    len(data or b""))


def prepare_document(
    d: Deps,
    tenant_id: str,
    version: int,
    source_id: str,
    source_file: SourceFile,
    doc: ParsedDocument,
    chunks: list[TextChunk],
    base_doc: Document | None,
    threshold: float | None = None,
    prior: dict[int, tuple[str, dict[str, Any] | None]] | None = None,
) -> Prepared:
    """An uploaded document; its raw file is stored only if the live version does not hold the same bytes.
    `prior`: the live document's chunks (`prior_quarantine`), whose releases carry while their text is the same."""
    content_hash = hashlib.sha256(source_file.data).hexdigest()
    stored = base_doc is not None and base_doc.content_hash == content_hash and base_doc.object_key
    key = base_doc.object_key if stored and base_doc is not None else object_key(tenant_id, version, doc.path)
    document = Document(
        id=new_id(), tenant_id=tenant_id, pack_version=version, path=doc.path, source_id=source_id,
        title=doc.title[:500], kind=doc.kind, content_hash=content_hash, object_key=key, meta=doc.meta,
        status="indexed",
    )
    prepared = _prepare(d, document, chunks, None if stored else source_file.data, threshold, prior or {})
    prepared.weight = len(source_file.data)
    return prepared


def prepare_carried(session: Session, d: Deps, version: int, base: Document, threshold: float | None = None
                    ) -> Prepared:
    """A live document copied into the new version: same file, same chunks, (cached) vectors, new point ids."""
    rows = list(session.scalars(select(Chunk).where(Chunk.tenant_id == base.tenant_id,
                                                    Chunk.document_id == base.id).order_by(Chunk.ordinal)))
    document = Document(
        id=new_id(), tenant_id=base.tenant_id, pack_version=version, path=base.path, source_id=base.source_id,
        title=base.title, kind=base.kind, content_hash=base.content_hash, object_key=base.object_key,
        meta=dict(base.meta or {}), status="indexed",
    )
    prior = {r.ordinal: (r.text, r.quarantine) for r in rows}
    return _prepare(d, document, [TextChunk(r.ordinal, r.heading, r.text) for r in rows], None, threshold, prior)


def write(session: Session, d: Deps, prepared: Prepared, embedded: list[list[float]]) -> int:
    """Store the raw file, the Document and Chunk rows, the vectors (cached for the next version) and the
    points, `UPSERT_BATCH` at a time. `embedded`: the vectors of `prepared.to_embed`. Returns how many chunks
    were embedded for it (0 when their vectors came from the cache; question views are not counted)."""
    document, chunks, held = prepared.document, prepared.chunks, prepared.held
    tenant_id, version = document.tenant_id, document.pack_version
    if len(embedded) != len(prepared.to_embed):
        raise RuntimeError(f"{len(embedded)} vectors for {len(prepared.to_embed)} texts of {document.path}")
    dense, question_dense = prepared.dense, prepared.question_dense
    chunks_embedded = 0 if dense is not None else len(chunks)
    if dense is None:
        dense, embedded = embedded[: len(prepared.texts)], embedded[len(prepared.texts) :]
        embedcache.save(d.objects, prepared.key, dense)
    if question_dense is None and prepared.question_key is not None:
        question_dense = embedded
        embedcache.save(d.objects, prepared.question_key, question_dense)
    asked = iter(question_dense or [])
    questions = [None if q is None else next(asked) for q in prepared.questions]
    if prepared.data is not None:
        try:
            d.objects.put(document.object_key or "", prepared.data, mimetypes.guess_type(document.path)[0])
        except ValueError as exc:  # a name the object store refuses (e.g. "C:" style)
            raise ParseError(f"file name not allowed: {exc}") from exc
    session.add(document)
    session.flush()  # the Document row before its Chunk rows (no relationships to order the inserts)
    ids = [chunk_id(tenant_id, version, document.path, c.ordinal) for c in chunks]
    for start in range(0, len(chunks), UPSERT_BATCH):
        group = chunks[start : start + UPSERT_BATCH]
        sparse = d.sparse.encode_documents(prepared.texts[start : start + UPSERT_BATCH])
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
    return chunks_embedded


def _embed_now(d: Deps, prepared: Prepared) -> list[list[float]]:
    texts = prepared.to_embed
    vectors: list[list[float]] = []
    for start in range(0, len(texts), UPSERT_BATCH):
        vectors.extend(d.embedder.embed_documents(texts[start : start + UPSERT_BATCH]))
    return vectors


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
    """One document, embedded on this thread (ingestion overlaps the embedder with the rest instead:
    app/knowledge/pipeline.py)."""
    prepared = prepare_document(d, tenant_id, version, source_id, source_file, doc, chunks, base_doc, threshold,
                                prior_quarantine(session, base_doc))
    return write(session, d, prepared, _embed_now(d, prepared))


def carry_document(session: Session, d: Deps, version: int, source_id: str, base: Document,
                   threshold: float | None = None) -> tuple[int, int]:
    """Copy a live document into the new version: same file, same chunks, cached vectors, new point ids."""
    prepared = prepare_carried(session, d, version, base, threshold)
    return len(prepared.chunks), write(session, d, prepared, _embed_now(d, prepared))

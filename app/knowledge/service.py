"""Knowledge ingestion: files in, Document/Chunk rows and vector points out.

`ingest_paths` flushes and leaves the commit to its caller (a CLI command, a request, an RQ job). Vector
upserts and object-store writes happen before that commit and cannot roll back with it, so every step is
idempotent instead: chunk ids are deterministic (tenant, pack version, path, ordinal), re-ingesting a path
overwrites its points and then deletes the ones past its new length, and raw files are stored under a key
derived from the same tuple. A job that fails half-way can simply be run again.

A bad file (unsupported, undecodable, malformed, empty, oversized, unsafe zip path) is refused with a reason
and the others go in. Failures of the infrastructure itself (vector store, object store, embedder) raise:
they are not the file's fault and the job should be retried.
"""

from __future__ import annotations

import hashlib
import mimetypes
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.knowledge.chunk import TextChunk, chunk_document
from app.knowledge.ids import chunk_id
from app.knowledge.parse import FileError, ParsedDocument, ParseError, SourceFile, collect, parse
from app.models import Chunk, Document, IngestionJob, KnowledgeSource, Tenant, new_id, utcnow
from app.providers.embeddings.base import Embedder, SparseEncoder
from app.providers.storage.base import ObjectStore
from app.providers.vectors.base import ChunkPoint, VectorStore

EMBED_GROUP = 64  # chunks embedded and upserted together; the embedder batches further inside


@dataclass(frozen=True)
class IngestProgress:
    file: str
    status: str  # indexed | failed
    files_done: int
    files_total: int
    chunks: int  # chunks indexed so far in this run


@dataclass
class IngestReport:
    tenant_id: str
    pack_version: int
    job_id: str
    source_id: str
    files_ok: list[str] = field(default_factory=list)  # pack paths indexed
    files_failed: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    chunks: int = 0
    documents: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Deps:
    embedder: Embedder
    sparse: SparseEncoder
    vectors: VectorStore
    objects: ObjectStore


def _deps(
    embedder: Embedder | None,
    sparse_encoder: SparseEncoder | None,
    vector_store: VectorStore | None,
    object_store: ObjectStore | None,
) -> _Deps:
    from app import runtime

    return _Deps(
        embedder=embedder or runtime.get_embedder(),
        sparse=sparse_encoder or runtime.get_sparse_encoder(),
        vectors=vector_store or runtime.get_vector_store(),
        objects=object_store or runtime.get_object_store(),
    )


def object_key(tenant_id: str, pack_version: int, path: str) -> str:
    return f"{tenant_id}/knowledge/v{pack_version}/{path}"


def _describe(paths: Sequence[Path]) -> str:
    names = ", ".join(Path(p).name for p in paths[:3])
    return (names + (f" and {len(paths) - 3} more" if len(paths) > 3 else ""))[:300] or "(nothing)"


def ingest_paths(
    session: Session,
    tenant_id: str,
    paths: list[Path],
    *,
    progress: Callable[[IngestProgress], None] | None = None,
    pack_version: int | None = None,
    job_id: str | None = None,
    embedder: Embedder | None = None,
    sparse_encoder: SparseEncoder | None = None,
    vector_store: VectorStore | None = None,
    object_store: ObjectStore | None = None,
) -> IngestReport:
    """Ingest folders, zips and files into `tenant_id`'s pack `pack_version` (default: the tenant's live
    version, or 1). With `job_id`, updates that queued IngestionJob instead of creating one."""
    started = time.monotonic()
    tenant = session.get(Tenant, tenant_id) if tenant_id else None
    if tenant is None:
        raise ValueError(f"unknown tenant {tenant_id!r}")
    version = pack_version if pack_version is not None else (tenant.live_pack_version or 1)
    if version < 1:
        raise ValueError("pack_version must be 1 or more")
    deps = _deps(embedder, sparse_encoder, vector_store, object_store)
    settings = get_settings()

    files, errors = collect([Path(p) for p in paths], settings.max_upload_bytes)
    source = KnowledgeSource(id=new_id(), tenant_id=tenant_id, name=_describe(paths), pack_version=version)
    session.add(source)
    session.flush()  # the models have no relationships, so the unit of work would not order these inserts
    job = _job(session, tenant_id, job_id)
    job.source_id = source.id
    job.status = "running"
    job.total_files = len(files) + len(errors)
    session.flush()

    report = IngestReport(tenant_id, version, job.id, source.id)
    total = job.total_files
    done = 0

    def tick(name: str, status: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(IngestProgress(name, status, done, total, report.chunks))

    for error in errors:
        report.files_failed.append(error.to_dict())
        tick(error.file, "failed")
    for source_file in files:
        try:
            doc = parse(source_file)
            chunks = chunk_document(doc, settings.chunk_max_words)
            if not chunks:
                raise ParseError("no text to index")
            if len(source_file.path) > 500:
                raise ParseError("path is longer than 500 characters")
            n = _index_document(session, deps, tenant_id, version, source.id, source_file, doc, chunks)
        except ParseError as exc:
            report.files_failed.append(FileError(source_file.path, str(exc)).to_dict())
            tick(source_file.path, "failed")
            continue
        report.files_ok.append(source_file.path)
        report.documents += 1
        report.chunks += n
        tick(source_file.path, "indexed")

    job.done_files = done
    job.chunks = report.chunks
    job.errors = list(report.files_failed)
    job.status = "failed" if report.files_failed and not report.files_ok else "succeeded"
    job.finished_at = utcnow()
    job.detail = f"{len(report.files_ok)} indexed, {len(report.files_failed)} refused, {report.chunks} chunks"
    session.flush()
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _job(session: Session, tenant_id: str, job_id: str | None) -> IngestionJob:
    if job_id is None:
        job = IngestionJob(id=new_id(), tenant_id=tenant_id)
        session.add(job)
        return job
    existing = session.get(IngestionJob, job_id)
    if existing is None or existing.tenant_id != tenant_id:
        raise ValueError(f"no ingestion job {job_id!r} for this tenant")
    return existing


def _index_document(
    session: Session,
    deps: _Deps,
    tenant_id: str,
    version: int,
    source_id: str,
    source_file: SourceFile,
    doc: ParsedDocument,
    chunks: list[TextChunk],
) -> int:
    key = object_key(tenant_id, version, doc.path)
    try:
        deps.objects.put(key, source_file.data, mimetypes.guess_type(doc.path)[0])
    except ValueError as exc:  # a name the object store refuses (e.g. "C:" style)
        raise ParseError(f"file name not allowed: {exc}") from exc

    document = session.scalar(
        select(Document).where(
            Document.tenant_id == tenant_id, Document.pack_version == version, Document.path == doc.path
        )
    )
    if document is None:
        document = Document(id=new_id(), tenant_id=tenant_id, pack_version=version, path=doc.path)
        session.add(document)
    else:
        session.execute(delete(Chunk).where(Chunk.tenant_id == tenant_id, Chunk.document_id == document.id))
    document.source_id = source_id
    document.title = doc.title[:500]
    document.kind = doc.kind
    document.content_hash = hashlib.sha256(source_file.data).hexdigest()
    document.object_key = key
    document.meta = doc.meta
    document.status = "indexed"
    document.error = None
    session.flush()  # the Document row before its Chunk rows (no relationships to order the inserts)

    ids = [chunk_id(tenant_id, version, doc.path, c.ordinal) for c in chunks]
    for start in range(0, len(chunks), EMBED_GROUP):
        group = chunks[start : start + EMBED_GROUP]
        texts = [c.embedding_text() for c in group]
        dense = deps.embedder.embed_documents(texts)
        sparse = deps.sparse.encode_documents(texts)
        points = [
            ChunkPoint(
                id=ids[start + i],
                tenant_id=tenant_id,
                dense=dense[i],
                sparse=sparse[i],
                payload={
                    "document": doc.path,
                    "document_id": document.id,
                    "chunk_id": ids[start + i],
                    "heading": c.heading,
                    "text": c.text,
                    "title": document.title,
                    "pack_version": version,
                    "kind": doc.kind,
                },
            )
            for i, c in enumerate(group)
        ]
        deps.vectors.upsert(tenant_id, points)
    _drop_stale_points(deps, tenant_id, version, doc.path, len(chunks))

    session.add_all(
        Chunk(
            id=ids[i],
            tenant_id=tenant_id,
            document_id=document.id,
            ordinal=c.ordinal,
            heading=c.heading,
            text=c.text,
            token_estimate=round(c.words * 4 / 3),
        )
        for i, c in enumerate(chunks)
    )
    session.flush()
    return len(chunks)


def _drop_stale_points(deps: _Deps, tenant_id: str, version: int, path: str, n: int) -> None:
    """After overwriting ordinals 0..n-1, delete what an earlier, longer version of the file left behind.

    Every version of a file has ids for ordinals 0..m-1, so what remains past n is exactly ordinals
    n..count-1: no window in which the document is missing from search.
    """
    where = {"document": path, "pack_version": version}
    count = deps.vectors.count(tenant_id, where)
    if count > n:
        deps.vectors.delete(tenant_id, [chunk_id(tenant_id, version, path, i) for i in range(n, count)])
        if deps.vectors.count(tenant_id, where) != n:
            raise RuntimeError(f"stale vectors for {path!r} could not be removed; re-run the ingestion")

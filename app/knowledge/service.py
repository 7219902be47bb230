"""Knowledge ingestion: files in, a new pack version out (Document/Chunk rows, vector points, stored files).

Each run builds version N+1 beside the live one (see app/knowledge/versions.py for the design):
1. the uploaded files are parsed, chunked and indexed into N+1; an unchanged document's vectors come from the
   embedding cache, so only new or changed text is embedded;
2. unless `replace`, every document of the live version that the upload does not bring (or brought broken) is
   carried forward into N+1 without embedding, so an upload of one file updates one file;
3. the version is `ready`; it goes live (`promote`) unless asked not to or the tenant's eval set says it is
   worse than the live one by more than EVAL_REGRESSION_MARGIN (app/knowledge/finishing.py).
Progress is reported per file as it goes (app/knowledge/reporting.py).
The live version is never written to: a failed or refused build leaves the assistant exactly as it was.

`ingest_paths` flushes and leaves the commit to its caller (a CLI command, an RQ job). Vector and object-store
writes happen before that commit and cannot roll back with it, so every step is idempotent: a rerun of the same
job gets the same version back, clears what the interrupted attempt wrote, and writes the same point ids.

A bad file is refused with a reason and the others go in. Failures of the infrastructure itself (vector store,
object store, embedder) raise: they are not the file's fault and the job should be retried.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import metrics
from app.config import get_settings
from app.knowledge import calibration, indexing, quarantine, versions
from app.knowledge.chunk import chunk_document
from app.knowledge.collect import collect
from app.knowledge.evaluate import eval_key
from app.knowledge.finishing import finish
from app.knowledge.indexing import Deps, Prepared
from app.knowledge.parse import (
    EVAL_FILE,
    METADATA_FILE,
    UNANSWERABLE_FILE,
    FileError,
    ParseError,
    SourceFile,
    clean_meta,
    parse,
    read_metadata,
)
from app.knowledge.pipeline import MAX_PENDING, EmbeddingPipeline
from app.knowledge.reporting import IngestProgress, IngestReport, ProgressMeter, publish_progress
from app.models import Document, IngestionJob, KnowledgeSource, Tenant, new_id, utcnow

log = logging.getLogger(__name__)


def _describe(paths: list[Path]) -> str:
    names = ", ".join(Path(p).name for p in paths[:3])
    return (names + (f" and {len(paths) - 3} more" if len(paths) > 3 else ""))[:300] or "(nothing)"


def ingest_paths(
    session: Session,
    tenant_id: str,
    paths: list[Path],
    *,
    progress: Callable[[IngestProgress], None] | None = None,
    job_id: str | None = None,
    promote: bool = True,
    replace: bool = False,
    meta: dict[str, Any] | None = None,
    deps: Deps,
) -> IngestReport:
    """Build a new pack version for `tenant_id` from folders, zips and files (see the module docstring).
    `meta` ({"brand", "category", "language", "source_url"}) applies to every document that does not say
    otherwise. With `job_id`, updates that queued IngestionJob instead of creating one. `deps`: the stores it
writes to (`Container.knowledge`)."""
    started = time.monotonic()
    tenant = session.get(Tenant, tenant_id) if tenant_id else None
    if tenant is None:
        raise ValueError(f"unknown tenant {tenant_id!r}")
    d = deps
    settings = get_settings()

    job = _job(session, tenant_id, job_id)
    build = versions.start_build(session, tenant_id, job.id)
    versions.clear_version(session, d.vectors, tenant_id, build.version)
    base = tenant.live_pack_version if build.version != tenant.live_pack_version else None
    files, errors = collect([Path(p) for p in paths], settings.max_file_bytes, settings.max_pack_bytes,
                            settings.max_pack_files)
    files, pack_meta = _reserved_files(d, tenant_id, files, errors)
    source = KnowledgeSource(id=new_id(), tenant_id=tenant_id, name=_describe(paths), pack_version=build.version)
    session.add(source)
    session.flush()  # the models have no relationships, so the unit of work would not order these inserts
    job.source_id, job.status, job.pack_version = source.id, "running", build.version
    base_docs = _documents(session, tenant_id, base) if base is not None and not replace else {}
    uploaded = {f.path for f in files}
    job.total_files = len(files) + len(errors) + len(set(base_docs) - uploaded)
    session.flush()

    report = IngestReport(tenant_id, build.version, job.id, source.id)
    meter = ProgressMeter(total_bytes=sum(len(f.data) for f in files), started=started)
    threshold = quarantine.tenant_threshold(tenant)

    def tick(name: str, status: str, reason: str | None = None, weight: int = 0) -> None:
        meter.files_done += 1
        meter.bytes_done += weight
        metrics.ingest_file(status)
        if progress is not None:
            progress(meter.event(name, status, job.total_files, report))
        publish_progress(d.bus, tenant_id, job.id, build.version, name, status, reason, meter.files_done,
                         job.total_files, report.chunks)

    def failed(path: str, reason: str, weight: int) -> None:
        report.files_failed.append(FileError(path, reason).to_dict())
        if path in base_docs:
            job.total_files += 1  # the live version's copy of the file is carried forward instead
            uploaded.discard(path)
        tick(path, "failed", reason, weight)

    def written(prepared: Prepared, vectors: list[list[float]], *, carried: bool) -> None:
        path = prepared.document.path
        try:
            embedded = indexing.write(session, d, prepared, vectors)
        except ParseError as exc:
            failed(path, str(exc), prepared.weight)
            return
        report.embedded += embedded
        if carried:
            report.files_carried.append(path)
            report.version_chunks += len(prepared.chunks)
        else:
            report.files_ok.append(path)
            report.chunks += len(prepared.chunks)
        tick(path, "carried" if carried else "indexed", weight=prepared.weight)

    for error in errors:
        report.files_failed.append(error.to_dict())
        tick(error.file, "failed", error.reason)
    # The embedder runs on INGEST_THREADS threads of its own (app/knowledge/pipeline.py); this one parses, chunks
    # and writes the documents whose vectors are back, in file order, so a rerun writes the same rows in order.
    files_started = time.monotonic()
    call_texts = get_settings().ingest_call_texts
    with EmbeddingPipeline([d.embedder] * d.threads, call_texts=call_texts,
                           max_pending=max(MAX_PENDING, call_texts) * d.threads) as pipe:
        queued: deque[tuple[Prepared, Future[list[list[float]]], bool]] = deque()

        def drain(*, room_for: int = 0, everything: bool = False) -> None:
            """Write what is ready; wait for the oldest while the pipeline has no room for `room_for` texts."""
            while queued and (everything or queued[0][1].done()
                              or pipe.pending + room_for > pipe.max_pending):
                prepared, future, carried = queued.popleft()
                written(prepared, future.result(), carried=carried)

        def enqueue(prepared: Prepared, carried: bool) -> None:
            texts = prepared.to_embed
            drain(room_for=len(texts))
            queued.append((prepared, pipe.submit(texts, prepared.keys(d.by_passage)), carried))
            drain()

        for source_file in files:
            try:
                doc = parse(source_file, max_pdf_pages=settings.max_pdf_pages)
                listed = pack_meta.get(source_file.path) or pack_meta.get("*", {})
                doc.meta = {**clean_meta(meta or {}), **listed, **doc.meta}
                chunks = chunk_document(doc, settings.chunk_max_words)
                if not chunks:
                    raise ParseError("no text to index")
                if len(source_file.path) > 500:
                    raise ParseError("path is longer than 500 characters")
                base_doc = base_docs.get(source_file.path)
                prepared = indexing.prepare_document(d, tenant_id, build.version, source.id, source_file, doc,
                                                     chunks, base_doc, threshold,
                                                     indexing.prior_quarantine(session, base_doc))
            except ParseError as exc:
                drain()
                failed(source_file.path, str(exc), len(source_file.data))
                continue
            enqueue(prepared, carried=False)
        drain(everything=True)  # before carrying: an upload refused at write time is carried forward instead
        for path, base_doc in sorted(base_docs.items()):
            if path not in uploaded:
                enqueue(indexing.prepare_carried(session, d, build.version, base_doc, threshold), carried=True)
        drain(everything=True)
    report.reused = pipe.reused
    report.timings = {"files": round(time.monotonic() - files_started, 3), "embedding": round(pipe.seconds, 3)}
    finishing = time.monotonic()
    report.documents = len(report.files_ok)
    report.version_documents = report.documents + len(report.files_carried)
    report.version_chunks += report.chunks
    report.quarantined = quarantine.count_held(session, tenant_id, build.version)
    metrics.injection_flagged("chunk", report.quarantined)
    finish(session, d, tenant, build, report, promote=promote)
    report.timings["finishing"] = round(time.monotonic() - finishing, 3)
    job.done_files, job.chunks, job.errors = meter.files_done, report.version_chunks, list(report.files_failed)
    job.status = "failed" if report.status == "failed" else "succeeded"
    job.finished_at = utcnow()
    job.detail = (f"version {build.version} {report.status}: {len(report.files_ok)} indexed, "
                  f"{len(report.files_carried)} carried forward, {len(report.files_failed)} refused, "
                  f"{report.version_chunks} chunks ({report.embedded} embedded)"
                  + (f", {report.quarantined} quarantined as suspected prompt injection" if report.quarantined
                     else "")
                  + (f"; {report.notes}" if report.notes else ""))
    session.flush()
    report.seconds = round(time.monotonic() - started, 3)
    publish_progress(d.bus, tenant_id, job.id, build.version, "", report.status, report.notes, meter.files_done,
                     job.total_files, report.chunks)
    return report


def _job(session: Session, tenant_id: str, job_id: str | None) -> IngestionJob:
    if job_id is None:
        job = IngestionJob(id=new_id(), tenant_id=tenant_id)
        session.add(job)
        session.flush()
        return job
    existing = session.get(IngestionJob, job_id)
    if existing is None or existing.tenant_id != tenant_id:
        raise ValueError(f"no ingestion job {job_id!r} for this tenant")
    return existing


def _documents(session: Session, tenant_id: str, version: int) -> dict[str, Document]:
    stmt = select(Document).where(Document.tenant_id == tenant_id, Document.pack_version == version,
                                  Document.status == "indexed")
    return {doc.path: doc for doc in session.scalars(stmt)}


def _reserved_files(
    d: Deps, tenant_id: str, files: list[SourceFile], errors: list[FileError]
) -> tuple[list[SourceFile], dict[str, dict[str, Any]]]:
    """`_metadata.json` (metadata per document), `_eval.jsonl` and `_unanswerable.jsonl` (the tenant's eval sets)
    are not documents."""
    from app.knowledge.evaluate import EvalError, parse_questions

    pack_meta: dict[str, dict[str, Any]] = {}
    rest = []
    for f in files:
        if f.path == METADATA_FILE:
            try:
                pack_meta = read_metadata(f.data)
            except ParseError as exc:
                errors.append(FileError(f.path, str(exc)))
        elif f.path == EVAL_FILE:
            try:
                parse_questions(f.data)
                d.objects.put(eval_key(tenant_id), f.data, "application/jsonl")
            except EvalError as exc:
                errors.append(FileError(f.path, str(exc)))
        elif f.path == UNANSWERABLE_FILE:
            try:
                calibration.parse_unanswerable(f.data)
                d.objects.put(calibration.unanswerable_key(tenant_id), f.data, "application/jsonl")
            except EvalError as exc:
                errors.append(FileError(f.path, str(exc)))
        else:
            rest.append(f)
    return rest, pack_meta

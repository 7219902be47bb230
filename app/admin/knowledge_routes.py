"""Admin API, knowledge: uploads, ingestion jobs, documents and pack versions (`/admin/v1/knowledge...`).

Same rules as the rest of the admin API (app/admin/routes.py): the tenant comes from the admin key only, another
tenant's id is a 404, every change is audited in its own transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.admin import knowledge_schemas as s
from app.admin import service
from app.admin.request_limit import LIMITED
from app.admin.routes import CursorQ, Limit, in_transaction
from app.admin.uploads import UploadError, build_options, collect, read_form
from app.api.services import Services
from app.audit import record
from app.auth import Admin
from app.bootstrap import Container
from app.config import get_settings
from app.db import session_scope
from app.jobs import JobQueue
from app.knowledge import calibration, quarantine, versions
from app.models import IngestionJob, PackVersion, Tenant, new_id

router = APIRouter(prefix="/admin/v1", tags=["admin: knowledge"], dependencies=LIMITED)
# Pack versions are 32-bit integers in the database: a larger number is a 422 here, not a database error.
MAX_VERSION = 2**31 - 1

_T = TypeVar("_T")


def job_out(jobs: JobQueue, j: IngestionJob) -> s.JobOut:
    done_files, chunks = j.done_files, j.chunks
    progress = None
    if j.status == "running":  # the row is written at the end; a job running in this process reports live
        live = jobs.progress(j.id) or {}
        done_files, chunks = live.get("done_files", done_files), live.get("chunks", chunks)
        if "bytes_total" in live:
            progress = s.JobProgress(**{k: live[k] for k in s.JobProgress.model_fields})
    return s.JobOut(
        id=j.id,
        status=j.status,
        pack_version=j.pack_version,
        total_files=j.total_files,
        done_files=done_files,
        chunks=chunks,
        errors=[s.FileError(**e) for e in j.errors or []],
        detail=j.detail,
        created_at=j.created_at,
        finished_at=j.finished_at,
        progress=progress,
    )


# --- knowledge ----------------------------------------------------------------------------------------------

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Markdown, HTML, PDF, DOCX, text, CSV/JSON FAQ files, or a .zip of "
                            "them. `_metadata.json` maps paths to metadata; `_eval.jsonl` sets the eval questions.",
                        },
                        "version_only": {"type": "boolean", "description": "Build the version, do not promote."},
                        "replace": {"type": "boolean", "description": "The upload is the whole pack: live "
                                    "documents it does not contain are left out of the new version."},
                        "brand": {"type": "string"},
                        "category": {"type": "string"},
                        "language": {"type": "string"},
                        "source_url": {"type": "string"},
                    },
                },
                "encoding": {"files": {"contentType": "application/octet-stream"}},
            }
        },
    }
}


@router.post(
    "/knowledge",
    response_model=s.UploadAccepted,
    status_code=202,
    summary="Upload knowledge",
    openapi_extra=_UPLOAD_BODY,
    responses={
        400: {"description": "The multipart body is broken."},
        413: {"description": "The upload (or a zip's content) is over the size limit."},
        415: {"description": "A file type that cannot be ingested, or a body that is not multipart."},
        422: {"description": "No files, an empty or unreadable zip, or two files with one name."},
        503: {"description": "The job could not be queued; nothing was ingested, try again."},
    },
)
async def upload_knowledge(request: Request, who: Admin, services: Services) -> s.UploadAccepted:
    """Send one or more files, or a zip, as multipart field `files`. The body is refused with 413 as soon as
    it passes MAX_UPLOAD_BYTES. The files are stored and a job builds a new pack version from them in the
    background (live documents the upload does not bring are carried forward unless `replace=true`); it goes
    live when built unless `version_only=true` or the tenant's eval set scores it worse: poll `status_url`.
    Zip members of an unsupported type are left out and listed in `skipped` (and in the job's
    `errors`)."""
    limit = get_settings().max_upload_bytes
    try:
        parts, fields = await read_form(request, limit)
        options = build_options(fields)
        upload = await collect(parts, limit)
    except UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    job_id = await run_in_threadpool(
        _stage_and_queue, services, who.tenant_id, who.actor, upload.files, upload.skipped, options
    )
    return s.UploadAccepted(
        job_id=job_id,
        status="queued",
        status_url=f"/admin/v1/knowledge/jobs/{job_id}",
        files=[name for name, _ in upload.files],
        skipped=[s.FileError(**e) for e in upload.skipped],
    )


def _stage_and_queue(
    services: Container,
    tenant_id: str,
    actor: str,
    files: list[tuple[str, bytes]],
    skipped: list[dict[str, str]],
    options: dict[str, Any] | None = None,
) -> str:
    """Objects first, then the job row, then the queue: a failure at any step undoes the earlier ones, so a
    refused upload leaves neither a job nor files behind."""
    from app.jobs import upload_prefix

    job_id = new_id()
    store = services.object_store
    prefix = upload_prefix(tenant_id, job_id)
    keys: list[str] = []
    try:
        for name, data in files:
            store.put(prefix + name, data)
            keys.append(prefix + name)
        with session_scope(tenant=tenant_id) as db:
            db.add(
                IngestionJob(
                    id=job_id,
                    tenant_id=tenant_id,
                    status="queued",
                    total_files=len(files),
                    errors=list(skipped),
                    options=dict(options or {}),
                )
            )
            record(
                db,
                tenant_id,
                actor,
                "knowledge.uploaded",
                "ingestion_job",
                job_id,
                {"files": [name for name, _ in files], "skipped": len(skipped)},
            )
    except Exception:
        for key in keys:
            store.delete(key)
        raise
    try:
        services.job_queue.submit(job_id)
    except Exception as exc:
        with session_scope(tenant=tenant_id) as db:
            job = db.get_one(IngestionJob, job_id)
            job.status, job.detail = "failed", f"could not be queued: {exc.__class__.__name__}: {exc}"[:2000]
        for key in keys:
            store.delete(key)
        raise HTTPException(503, "the ingestion queue is unavailable; nothing was ingested, try again") from exc
    return job_id


@router.get("/knowledge/jobs/{job_id}", response_model=s.JobOut, summary="Get an ingestion job")
def get_job(job_id: str, who: Admin, services: Services) -> s.JobOut:
    """Status (`queued`, `running`, `succeeded`, `failed`), files done, chunks indexed, and each refused file
    with its reason."""
    return in_transaction(who.tenant_id,
                          lambda db: job_out(services.job_queue, service.get_job(db, who.tenant_id, job_id)))


@router.get("/knowledge/jobs", response_model=s.JobsOut, summary="List ingestion jobs")
def list_jobs(who: Admin, services: Services, limit: Limit = 50, cursor: CursorQ = None) -> s.JobsOut:
    """Newest first."""

    def work(db: Session) -> s.JobsOut:
        jobs, nxt = service.list_jobs(db, who.tenant_id, cursor, limit)
        return s.JobsOut(jobs=[job_out(services.job_queue, j) for j in jobs], next_cursor=nxt)

    return in_transaction(who.tenant_id, work)


@router.get("/knowledge/documents", response_model=s.DocumentsOut, summary="List knowledge documents")
def list_documents(
    who: Admin,
    pack_version: Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="Only this pack version.")] = None,
) -> s.DocumentsOut:
    """Each document with its chunk count, pack version and status (`indexed` or `failed`)."""
    return in_transaction(who.tenant_id,
        lambda db: s.DocumentsOut(
            documents=[
                s.DocumentOut(
                    id=d.id,
                    path=d.path,
                    title=d.title,
                    kind=d.kind,
                    chunks=n,
                    pack_version=d.pack_version,
                    status=d.status,
                    error=d.error,
                    meta=d.meta or {},
                    created_at=d.created_at,
                )
                for d, n in service.list_documents(db, who.tenant_id, pack_version)
            ]
        )
    )


@router.delete("/knowledge/documents/{document_id}", status_code=204, summary="Delete a document")
def delete_document(document_id: str, who: Admin, services: Services) -> Response:
    """Removes the document (its file path) from every pack version: vectors, stored files and rows. The
    assistant stops citing it at once, and a rollback cannot bring it back."""
    in_transaction(who.tenant_id, lambda db: service.delete_document(db, who, document_id, services.knowledge))
    return Response(status_code=204)


def _version(v: PackVersion) -> s.PackVersionOut:
    return s.PackVersionOut(
        version=v.version, status=v.status, documents=v.documents, chunks=v.chunks, embedded=v.embedded,
        scores=v.scores or {}, calibration=v.calibration, notes=v.notes, job_id=v.job_id, created_at=v.created_at,
        promoted_at=v.promoted_at,
    )


def _versions_out(db: Session, tenant_id: str) -> s.PackVersionsOut:
    return s.PackVersionsOut(
        live_version=db.get_one(Tenant, tenant_id).live_pack_version,
        versions=[_version(v) for v in versions.list_versions(db, tenant_id)],
    )


def _version_call(tenant_id: str, fn: Callable[[Session], _T]) -> _T:
    try:
        return in_transaction(tenant_id, fn)
    except versions.VersionError as exc:
        status = 404 if "does not exist" in str(exc) else 409
        raise HTTPException(status, str(exc)) from exc


@router.get("/knowledge/versions", response_model=s.PackVersionsOut, summary="List pack versions")
def list_versions(who: Admin) -> s.PackVersionsOut:
    """Newest first, with status, sizes, how much was embedded, evaluation scores and notes (e.g. why a
    version was not promoted)."""
    return in_transaction(who.tenant_id, lambda db: _versions_out(db, who.tenant_id))


@router.post(
    "/knowledge/versions/{version}/promote",
    response_model=s.PackVersionsOut,
    summary="Promote a pack version",
    responses={404: {"description": "No such version."}, 409: {"description": "The version cannot go live."}},
)
def promote_version(version: Annotated[int, Path(ge=1, le=MAX_VERSION)], who: Admin) -> s.PackVersionsOut:
    """Make a `ready` (or `retired`) version the live one. Atomic: the next answer reads the new version."""

    def work(db: Session) -> s.PackVersionsOut:
        versions.promote(db, who.tenant_id, version, actor=who.actor)
        return _versions_out(db, who.tenant_id)

    return _version_call(who.tenant_id, work)


@router.post(
    "/knowledge/rollback",
    response_model=s.PackVersionsOut,
    summary="Roll back to the previous live version",
    responses={409: {"description": "There is no earlier live version."}},
)
def rollback_version(who: Admin) -> s.PackVersionsOut:
    """Back to the version that was live before the current one, in one step."""

    def work(db: Session) -> s.PackVersionsOut:
        versions.rollback(db, who.tenant_id, actor=who.actor)
        return _versions_out(db, who.tenant_id)

    return _version_call(who.tenant_id, work)


# --- relevance threshold (app/knowledge/calibration.py) -------------------------------------------------------


@router.get("/knowledge/relevance", response_model=s.RelevanceOut, summary="The relevance threshold in effect")
def get_relevance(who: Admin) -> s.RelevanceOut:
    """The `min_relevance` the assistant uses and where it comes from: the tenant's policy when set (it wins),
    else the live pack version's calibration on the tenant's eval questions, else the default 0.45; with the
    calibration's figures (tune and report splits, at the calibrated threshold and at the default)."""
    return in_transaction(who.tenant_id, lambda db: s.RelevanceOut(**calibration.relevance(db, who.tenant_id)))


@router.post(
    "/knowledge/relevance/calibrate",
    response_model=s.RelevanceOut,
    summary="Recalibrate the relevance threshold",
    responses={404: {"description": "No such version."}, 409: {"description": "Nothing to calibrate."}},
)
def calibrate_relevance(
    who: Admin,
    services: Services,
    pack_version: Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="Default: the live version.")]
    = None,
) -> s.RelevanceOut:
    """Calibrate the version again from the tenant's eval questions (`_eval.jsonl`, `_unanswerable.jsonl` of the
    latest upload that had them), as ingestion does. Audited as `knowledge.relevance_calibrated`."""

    def work(db: Session) -> s.RelevanceOut:
        try:
            calibration.recompute(db, services.knowledge, who.tenant_id, pack_version, actor=who.actor)
        except calibration.CalibrationError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        return s.RelevanceOut(**calibration.relevance(db, who.tenant_id))

    return in_transaction(who.tenant_id, work)


# --- quarantine (app/knowledge/quarantine.py) -----------------------------------------------------------------


@router.get("/knowledge/quarantine", response_model=s.QuarantineOut, summary="List quarantined knowledge chunks")
def list_quarantine(
    who: Admin,
    pack_version: Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="Default: the live version.")]
    = None,
    include_released: Annotated[bool, Query(description="Also list chunks already released.")] = False,
) -> s.QuarantineOut:
    """Chunks the injection scan held at ingestion (text addressed to the assistant, "ignore previous
    instructions"...), with the reason. A held chunk is never retrieved, so never shown to the LLM."""

    def work(db: Session) -> s.QuarantineOut:
        version = pack_version or db.get_one(Tenant, who.tenant_id).live_pack_version
        rows = quarantine.listing(db, who.tenant_id, version, include_released=include_released)
        return s.QuarantineOut(pack_version=version, chunks=[s.QuarantinedChunkOut(**r) for r in rows])

    return in_transaction(who.tenant_id, work)


@router.post(
    "/knowledge/quarantine/{chunk_id}/release",
    response_model=s.QuarantinedChunkOut,
    summary="Release a quarantined chunk",
    responses={404: {"description": "No such chunk in this tenant."}, 409: {"description": "Not held."}},
)
def release_chunk(chunk_id: Annotated[str, Path(max_length=36)], who: Admin,
                  services: Services) -> s.QuarantinedChunkOut:
    """After reading it: the chunk is indexed in its pack version and marked reviewed, so the answer-time scan
    lets it through. Audited as `knowledge.chunk_released`."""

    def work(db: Session) -> s.QuarantinedChunkOut:
        try:
            released = quarantine.release(db, who.tenant_id, chunk_id, who.actor, services.knowledge)
        except quarantine.QuarantineError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        record(db, who.tenant_id, who.actor, "knowledge.chunk_released", "chunk", chunk_id,
               {"document": released["document"], "pack_version": released["pack_version"]})
        row = quarantine.listing(db, who.tenant_id, released["pack_version"], include_released=True)
        return s.QuarantinedChunkOut(**next(r for r in row if r["chunk_id"] == chunk_id))

    return in_transaction(who.tenant_id, work)

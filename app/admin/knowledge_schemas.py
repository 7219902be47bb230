"""Response shapes of the admin API's knowledge routes (uploads, ingestion jobs, documents, pack versions).
Their examples are what the OpenAPI page shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FileError(BaseModel):
    file: str
    reason: str


class JobProgress(BaseModel):
    """Where a running job is (embedded mode, where the job runs in the serving process; a scale-out worker's
    job reports its counts when it ends)."""

    phase: str = Field(description="`indexing` (files being parsed, embedded and written), then `finishing` "
                       "(term statistics, the eval gate, promotion).")
    bytes_done: int = Field(description="Bytes of the uploaded files done (indexed or refused).")
    bytes_total: int
    embedded: int = Field(description="Chunks embedded so far (the others came from the embedding cache).")
    elapsed_s: float
    chunks_per_s: float = Field(description="Chunks written per second so far.")
    eta_s: float | None = Field(description="Seconds left for the files at the rate so far, by bytes; null until "
                                "the first file is done, 0 once every file is.")


class JobOut(BaseModel):
    id: str
    status: str = Field(description="`queued`, `running`, `succeeded` or `failed`.")
    pack_version: int | None = Field(default=None, description="The pack version this job builds.")
    total_files: int
    done_files: int
    chunks: int
    errors: list[FileError] = Field(
        description="Files that were refused, with the reason; a succeeded job can have some."
    )
    detail: str | None
    created_at: datetime
    finished_at: datetime | None
    progress: JobProgress | None = Field(default=None, description="While the job runs: bytes done, rate, ETA.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "4c2d...",
                    "status": "succeeded",
                    "total_files": 3,
                    "done_files": 3,
                    "chunks": 57,
                    "errors": [{"file": "broken.csv", "reason": "row 4 has no answer column"}],
                    "detail": None,
                    "created_at": "2026-11-23T18:20:00Z",
                    "finished_at": "2026-11-23T18:20:09Z",
                }
            ]
        }
    )


class JobsOut(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class UploadAccepted(BaseModel):
    job_id: str
    status: str
    status_url: str
    files: list[str] = Field(description="The files the job will ingest, by their name within the pack.")
    skipped: list[FileError] = Field(description="Zip members left out (unsupported type), with the reason.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "4c2d...",
                    "status": "queued",
                    "status_url": "/admin/v1/knowledge/jobs/4c2d...",
                    "files": ["faq.csv", "returns.md"],
                    "skipped": [{"file": "logo.png", "reason": "unsupported type '.png'"}],
                }
            ]
        }
    )


class DocumentOut(BaseModel):
    id: str
    path: str
    title: str
    kind: str
    chunks: int
    pack_version: int
    status: str
    error: str | None
    meta: dict[str, Any] = Field(default_factory=dict, description="brand, category, language, source_url.")
    created_at: datetime


class DocumentsOut(BaseModel):
    documents: list[DocumentOut]


class PackVersionOut(BaseModel):
    version: int
    status: str = Field(description="`building`, `ready`, `live`, `retired`, `failed` or `pruned`.")
    documents: int
    chunks: int
    embedded: int = Field(description="Chunks embedded for this build; the others reused cached vectors.")
    scores: dict[str, Any] = Field(description="Evaluation on the tenant's eval set: n, hit@1, hit@5, mrr.")
    calibration: dict[str, Any] | None = Field(
        default=None, description="The relevance threshold calibrated on the tenant's eval questions "
        "(`threshold`, null with a `reason` when not calibrated) and the figures behind it.")
    notes: str | None
    job_id: str | None
    created_at: datetime
    promoted_at: datetime | None


class RelevanceOut(BaseModel):
    in_effect: float = Field(description="The `min_relevance` the assistant uses now.")
    source: str = Field(description="`policy` (set explicitly in the tenant's policies: it wins over the "
                        "calibration), `calibrated` (the live version's calibration) or `default` (0.45).")
    policy: float | None = Field(description="`policies.min_relevance` when set explicitly.")
    calibrated: float | None = Field(description="The live version's calibrated threshold, if it has one.")
    pack_version: int | None = Field(description="The live version.")
    calibration: dict[str, Any] | None = Field(
        description="The live version's calibration: `threshold` (or null and a `reason`), `negatives_source` "
        "(`tenant`: its _unanswerable.jsonl; `generated`: other domains' questions), `rule`, and per split "
        "(`tune`: chose it, `report`: measures it) the figures at the `chosen` threshold and at the `default`: "
        "right, wrong, escalated of the answerable; negatives answered; answer/escalate precision and recall.")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "in_effect": 0.5, "source": "calibrated", "policy": None, "calibrated": 0.5, "pack_version": 3,
        "calibration": {"threshold": 0.5, "default": 0.45, "negatives_source": "tenant", "pack_version": 3,
                        "report": {"chosen": {"threshold": 0.5, "answerable": 38, "right": 30, "wrong": 3,
                                              "escalated": 5, "negatives": 10, "negatives_answered": 0}}},
    }]})


class PackVersionsOut(BaseModel):
    live_version: int | None
    versions: list[PackVersionOut]


class QuarantinedChunkOut(BaseModel):
    chunk_id: str
    document: str
    pack_version: int
    ordinal: int
    heading: str = ""
    text: str
    status: str = Field(description="held: not retrievable; released: indexed after an admin's review")
    reason: str = Field(description="Why the injection scan flagged it (score, threshold, rules, model score).")
    score: float
    rules: list[str] = Field(default_factory=list)
    threshold: float | None = None
    released_by: str | None = None
    released_at: str | None = None


class QuarantineOut(BaseModel):
    pack_version: int | None = Field(description="The version listed (the live one unless asked).")
    chunks: list[QuarantinedChunkOut]

"""What an ingestion run (app/knowledge/service.py) reports: a progress event per file, as it goes, to its caller
and to the tenant's `events` stream, and the `IngestReport` at the end."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from app.bus.base import Bus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestProgress:
    file: str
    status: str  # indexed | carried | failed
    files_done: int
    files_total: int
    chunks: int  # chunks indexed so far in this run
    embedded: int = 0  # of which embedded (the rest came from the embedding cache)
    bytes_done: int = 0  # bytes of the upload's files done (indexed, refused or written)
    bytes_total: int = 0
    elapsed_s: float = 0.0
    chunks_per_s: float = 0.0  # chunks written per second so far
    eta_s: float | None = None  # seconds left for the files, at the rate so far (None until there is a rate)
    phase: str = "indexing"  # indexing, or finishing once every file is done (term statistics, eval, promotion)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProgressMeter:
    """Progress of a run: files and bytes done, the rate so far and the time left at that rate. Bytes, not
    files, drive the estimate: pages differ in length by orders of magnitude, their chunks follow their bytes."""

    total_bytes: int
    started: float
    files_done: int = 0
    bytes_done: int = 0

    def event(self, name: str, status: str, files_total: int, report: IngestReport) -> IngestProgress:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        chunks = report.chunks + report.version_chunks  # uploaded and carried so far
        phase = "finishing" if self.files_done >= files_total else "indexing"
        eta = None
        if phase == "finishing":
            eta = 0.0
        elif self.bytes_done and self.total_bytes:
            eta = round(elapsed * (self.total_bytes - self.bytes_done) / self.bytes_done, 1)
        return IngestProgress(name, status, self.files_done, files_total, report.chunks, report.embedded,
                              self.bytes_done, self.total_bytes, round(elapsed, 3), round(chunks / elapsed, 2), eta,
                              phase)


@dataclass
class IngestReport:
    tenant_id: str
    pack_version: int
    job_id: str
    source_id: str
    files_ok: list[str] = field(default_factory=list)  # pack paths indexed from this upload
    files_failed: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    files_carried: list[str] = field(default_factory=list)  # live documents carried into the new version
    chunks: int = 0  # chunks indexed from this upload's files
    documents: int = 0  # documents indexed from this upload's files
    version_documents: int = 0  # documents in the new version (this upload's and the carried ones)
    version_chunks: int = 0
    embedded: int = 0  # chunks that had to be embedded (the rest came from the cache)
    reused: int = 0  # texts of those given the vector of the same text (or passage) embedded earlier in the run
    quarantined: int = 0  # chunks of the new version held as suspected prompt injection (not retrievable)
    status: str = "building"  # the version's status at the end: live | ready | failed
    promoted: bool = False
    notes: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # the version's relevance threshold (app/knowledge/calibration.py)
    seconds: float = 0.0
    # Where the time went: "files" (parse to the last write, overlapped with) "embedding" (the embedder's busy
    # time on its own thread), and "finishing" (term statistics, the eval gate, promotion).
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def publish_progress(bus: Bus, tenant_id: str, job_id: str, version: int, file: str, status: str, reason: str | None,
                     done: int, total: int, chunks: int) -> None:
    """Progress on the tenant's `events` stream. Best-effort: a bus outage must not fail an ingestion."""
    from app.contracts import EVENTS, IngestionProgress

    event = IngestionProgress(tenant_id=tenant_id, job_id=job_id, pack_version=version, file=file, status=status,
                              reason=reason, files_done=done, files_total=total, chunks=chunks)
    try:
        bus.publish(EVENTS, tenant_id, event.to_bus())
    except Exception:
        log.warning("could not publish ingestion progress for job %s", job_id, exc_info=True)

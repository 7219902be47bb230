"""The ingestion job queue port: the admin API stages an upload, commits an `IngestionJob` row, then submits its
id here. workers/ implements it (a thread of this process when embedded, RQ in scale-out) and registers it."""

from __future__ import annotations

from typing import Any, Protocol


def upload_prefix(tenant_id: str, job_id: str) -> str:
    """Where a job's uploaded files wait in the object store until the job has run."""
    return f"{tenant_id}/uploads/{job_id}/"


class JobQueue(Protocol):
    def submit(self, job_id: str) -> None:
        """Start a committed, queued job. Idempotent per job id; raises if the queue cannot take it."""
        ...

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """The latest progress of a job running in this process, if any (`done_files`, `chunks`...)."""
        ...

    def resume(self) -> int:
        """Re-submit the jobs a stopped process left unfinished (embedded only); returns how many."""
        ...

    def close(self) -> None: ...

"""Knowledge ingestion jobs: one function that runs a job, and the two ways to run it.

The admin API stores an upload's files in the object store under `upload_prefix(tenant, job)`, commits an
`IngestionJob` row (status `queued`), then submits it to the container's `JobQueue` (app/jobs.py), built here:
- embedded mode (no `REDIS_URL`): a single background thread of this process runs it, one job at a time (the
  embedder is memory-hungry, and qdrant-edge belongs to this process anyway);
- scale-out: an RQ job on the `ingest` queue, run by `switchboard worker` (`main()` below).

`run_ingestion_job` is idempotent: a job that already finished is left alone, and a job re-run after a crash
gets the same pack version back (allocated and committed before any vector is written), clears what the
interrupted run wrote to it and builds it again with the same deterministic point ids: no orphans, no copies.
The job's `options` say how to build: {"promote": bool, "replace": bool, "meta": {...}}."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from app.audit import record
from app.config import get_settings
from app.db import session_scope
from app.jobs import JobQueue, upload_prefix
from app.knowledge import versions
from app.models import IngestionJob, PackVersion, utcnow

if TYPE_CHECKING:
    from app.bootstrap import Container
    from app.knowledge.indexing import Deps

log = logging.getLogger(__name__)

QUEUE = "ingest"
JOB_TIMEOUT_S = 3600
_FINISHED = ("succeeded", "failed")

__all__ = ["upload_prefix"]

Progress = Callable[[str, dict[str, Any] | None], None]  # (job id, latest progress or None when done)


def run_queued_job(job_id: str) -> None:
    """What an RQ worker runs (`switchboard worker`): the job, with the worker process's own container."""
    from app.bootstrap import container

    run_ingestion_job(job_id, container().ingestion(dedicated=True))


def run_ingestion_job(job_id: str, deps: Deps | None = None, progress: Progress | None = None) -> None:
    """Ingest the files staged for `job_id` with `deps` (`Container.knowledge`) and record the outcome on its
    row. Never raises for a bad file: a per-file problem lands in `errors`, anything else marks the job `failed`
    with the reason in `detail`. Without `progress` (an RQ worker), progress goes to Redis, where the admin API
    reads it. Without `deps`: a job an RQ worker took from the queue under this name (enqueued by a release
    before `run_queued_job`), run with the worker process's container."""
    if deps is None:
        from app.bootstrap import container

        deps = container().ingestion(dedicated=True)  # as `run_queued_job`: the worker does nothing else
    settings = get_settings()
    if progress is None and settings.redis_url:
        progress = RedisProgress(settings.redis_url, settings.bus_namespace)

    # A queued job is named by its id alone: finding its tenant crosses tenants, the work is the tenant's.
    with session_scope(cross_tenant="job resume") as session:
        found = session.scalar(select(IngestionJob.tenant_id).where(IngestionJob.id == job_id))
    if found is None:
        log.warning("ingestion job %s does not exist; nothing to do", job_id)
        return
    tenant_id: str = found
    with session_scope(tenant=tenant_id) as session:
        job = session.get_one(IngestionJob, job_id)
        if job.status in _FINISHED:
            log.info("ingestion job %s already %s; nothing to do", job_id, job.status)
            return
        job.status = "running"
        job.pack_version = versions.start_build(session, tenant_id, job_id).version
    store = deps.objects
    prefix = upload_prefix(tenant_id, job_id)
    keys: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sb-ingest-") as tmp:
            pack = Path(tmp, "pack")
            keys = store.list(prefix)
            if not keys:
                raise RuntimeError("the uploaded files are no longer in the object store; upload them again")
            for key in keys:
                dest = pack / key[len(prefix) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(store.get(key))
            _ingest(deps, job_id, tenant_id, pack, progress or (lambda _job, _event: None))
    except Exception as exc:
        log.exception("ingestion job %s failed", job_id)
        with session_scope(tenant=tenant_id) as session:
            job = session.get_one(IngestionJob, job_id)
            job.status = "failed"
            job.detail = f"{exc.__class__.__name__}: {exc}"[:2000]
            job.finished_at = utcnow()
            build = session.scalars(select(PackVersion).where(PackVersion.job_id == job_id)).first()
            if build is not None and build.status == "building":
                build.status, build.notes = "failed", job.detail
            record(
                session,
                tenant_id,
                "system",
                "knowledge.job_failed",
                "ingestion_job",
                job_id,
                {"detail": job.detail},
            )
    _cleanup(store, keys)


def _ingest(deps: Deps, job_id: str, tenant_id: str, pack: Path, progress: Progress) -> None:
    from app.knowledge.service import ingest_paths

    # The ingester writes the outcome on the job row (status, done_files, chunks, errors, finished_at). While
    # it runs, its progress events are kept in memory (`ThreadJobQueue.progress`): on SQLite a second writer
    # would only wait for the ingest transaction to end.
    with session_scope(tenant=tenant_id) as session:
        job = session.get_one(IngestionJob, job_id)
        refused_at_upload = list(job.errors or [])
        options = dict(job.options or {})
        report = ingest_paths(
            session, tenant_id, [pack], progress=lambda event: progress(job_id, {
                **event.to_dict(), "done_files": event.files_done, "total_files": event.files_total}), job_id=job_id,
            promote=bool(options.get("promote", True)), replace=bool(options.get("replace", False)),
            meta=options.get("meta") or None, deps=deps,
        )
        job.errors = refused_at_upload + list(job.errors or [])
        record(
            session,
            tenant_id,
            "system",
            f"knowledge.job_{job.status}",
            "ingestion_job",
            job_id,
            {
                "files_ok": len(report.files_ok),
                "files_failed": len(job.errors),
                "chunks": report.chunks,
                "pack_version": report.pack_version,
                "version_status": report.status,
                "embedded": report.embedded,
            },
        )
    progress(job_id, None)


def _cleanup(store: Any, keys: list[str]) -> None:
    """Staged upload objects are transient: the ingester keeps its own copy of each document."""
    for key in keys:
        try:
            store.delete(key)
        except Exception:
            log.warning("could not delete staged upload object %s", key, exc_info=True)


# --- the two job queues ----------------------------------------------------------------------------------


def progress_key(namespace: str, job_id: str) -> str:
    return f"{namespace}:ingest-progress:{job_id}"


class RedisProgress:
    """A scale-out job's live progress, kept in Redis (at most one write a second; gone when the job ends) so the
    admin API, in another process, reports it like embedded mode's. Best-effort: Redis trouble never fails a job."""

    def __init__(self, redis_url: str, namespace: str, every_s: float = 1.0) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.namespace, self.every_s = namespace, every_s
        self._last = 0.0

    def __call__(self, job_id: str, event: dict[str, Any] | None) -> None:
        import redis

        key = progress_key(self.namespace, job_id)
        try:
            if event is None:
                self.client.delete(key)
                return
            now = time.monotonic()
            if now - self._last >= self.every_s or event.get("phase") == "finishing":
                self._last = now
                self.client.set(key, json.dumps(event), ex=JOB_TIMEOUT_S)
        except redis.RedisError:
            log.warning("could not record the progress of ingestion job %s", job_id, exc_info=True)


class ThreadJobQueue:
    """Embedded mode: one background thread of this process runs the jobs, one at a time, and keeps their live
    progress (the admin API reads it while a job runs)."""

    def __init__(self, deps: Callable[[], Deps]) -> None:
        """`deps`: the process's ingestion services, built when the first job runs (they load a model)."""
        self._deps = deps
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._live: dict[str, dict[str, Any]] = {}

    def _progress(self, job_id: str, event: dict[str, Any] | None) -> None:
        if event is None:
            self._live.pop(job_id, None)
        else:
            self._live[job_id] = event

    def submit(self, job_id: str) -> None:
        self.run(job_id)

    def run(self, job_id: str) -> Future[None]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
            return self._executor.submit(lambda: run_ingestion_job(job_id, self._deps(), self._progress))

    def progress(self, job_id: str) -> dict[str, Any] | None:
        return self._live.get(job_id)

    def resume(self) -> int:
        """Re-submit jobs left `queued` or `running` by a process that stopped. Call at start-up."""
        with session_scope(cross_tenant="job resume") as session:
            ids = list(session.scalars(select(IngestionJob.id).where(IngestionJob.status.in_(("queued", "running")))))
        for job_id in ids:
            self.submit(job_id)
        return len(ids)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=False)


class RqJobQueue:
    """Scale-out: an RQ job on the `ingest` queue, run by `switchboard worker` (`main()` below). RQ keeps its own
    queue: there is nothing to resume; live progress is in Redis (`RedisProgress`), the outcome on the job row."""

    def __init__(self, redis_url: str, queue: str | None = None, namespace: str | None = None) -> None:
        self.redis_url, self.queue = redis_url, queue
        self.namespace = namespace or get_settings().bus_namespace

    def submit(self, job_id: str) -> None:
        import redis
        from rq import Queue

        connection = redis.Redis.from_url(self.redis_url)
        try:
            # The RQ job id is derived from ours, so a repeated submit of one job does not enqueue a second copy.
            Queue(self.queue or QUEUE, connection=connection).enqueue_call(
                "workers.ingest.run_queued_job",
                args=(job_id,),
                job_id=f"ingest-{job_id}",
                timeout=JOB_TIMEOUT_S,
                result_ttl=86_400,
                failure_ttl=7 * 86_400,
                description=f"ingest knowledge (job {job_id})",
            )
        finally:
            connection.close()

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """What the worker running the job last recorded (`RedisProgress`), or None."""
        import redis

        connection = redis.Redis.from_url(self.redis_url)
        try:
            raw = connection.get(progress_key(self.namespace, job_id))
        except redis.RedisError:
            log.warning("could not read the progress of ingestion job %s", job_id, exc_info=True)
            return None
        finally:
            connection.close()
        return dict(json.loads(raw)) if raw else None

    def resume(self) -> int:
        return 0

    def close(self) -> None:
        pass


def job_queue(container: Container) -> JobQueue:
    url = container.settings.redis_url
    return (RqJobQueue(url, namespace=container.settings.bus_namespace) if url
            else ThreadJobQueue(lambda: container.knowledge))


def submit(services: Container, job_id: str, *, queue: str | None = None) -> None:
    """Submit a committed, queued job to the process's queue, or to the RQ queue `queue`."""
    settings = services.settings
    if queue and settings.redis_url:
        RqJobQueue(settings.redis_url, queue).submit(job_id)
    else:
        services.job_queue.submit(job_id)


def main(queues: list[str] | None = None, *, burst: bool = False) -> None:
    """`switchboard worker`: an RQ worker on the `ingest` queue (needs REDIS_URL)."""
    import redis
    from rq import Worker

    settings = get_settings()
    if not settings.redis_url:
        raise SystemExit(
            "switchboard worker needs REDIS_URL: in embedded mode `switchboard serve` runs ingestion jobs itself"
        )
    from app import logs

    logs.configure(settings.log_format, settings.log_level or logging.INFO)
    connection = redis.Redis.from_url(settings.redis_url)
    Worker(queues or [QUEUE], connection=connection).work(burst=burst, with_scheduler=False)

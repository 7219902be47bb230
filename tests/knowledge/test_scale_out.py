"""Ingestion against real servers: raw files and cached vectors in S3 (moto's S3 server), and an RQ worker
process on the real Redis and Postgres killed with SIGKILL mid-job, whose job, run again, leaves exactly the
point set a clean run leaves: no orphans, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bootstrap import container
from app.models import Chunk, Document, IngestionJob, Tenant
from tests.conftest import REDIS_TEST_URL, REPO, Graph
from tests.knowledge import samples
from tests.providers.test_object_store_contract import aws_env, s3_endpoint  # noqa: F401 - fixtures

PACK = REPO / "tenants" / "northwind" / "knowledge"


@pytest.fixture
def s3_home(graph: Graph, s3_endpoint: str, aws_env: None) -> Path:  # noqa: F811
    graph.configure(s3_bucket=f"sb-{uuid.uuid4().hex[:12]}", s3_endpoint_url=s3_endpoint)
    return graph.home


def test_ingestion_through_s3_stores_files_and_reuses_cached_vectors(s3_home: Path, tmp_path: Path) -> None:
    from app.db import get_sessionmaker, migrate
    from app.knowledge.service import ingest_paths

    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "returns.pdf").write_bytes(samples.pdf(["Returns are free within 30 days of delivery."]))
    (pack / "sizes.docx").write_bytes(samples.docx("Size guide", ["Boots run half a size large."]))
    (pack / "care.html").write_text(samples.HTML_PAGE)
    migrate()
    with get_sessionmaker()(info={"cross_tenant": "tests"}) as db:
        db.add(Tenant(id="acme", slug="acme", name="Acme"))
        db.commit()
        first = ingest_paths(db, "acme", [pack], deps=container().knowledge)
        db.commit()
        second = ingest_paths(db, "acme", [pack], deps=container().knowledge)
        db.commit()
    store = container().object_store
    assert type(store).__name__ == "S3ObjectStore"
    keys = store.list("acme/")
    assert [k for k in keys if "/v1/" in k] == ["acme/knowledge/v1/care.html", "acme/knowledge/v1/returns.pdf",
                                                "acme/knowledge/v1/sizes.docx"]
    assert store.get("acme/knowledge/v1/returns.pdf") == (pack / "returns.pdf").read_bytes()
    assert len([k for k in keys if "/vectors/" in k]) == 3 and not [k for k in keys if "/v2/" in k]
    assert first.embedded == first.chunks > 0 and second.embedded == 0
    assert container().retriever("acme", "how long do I have to return",
                                 filters={"pack_version": 2})[0].document == "returns.pdf"


def _big_pack(root: Path) -> list[Path]:
    """Enough text that embedding takes a few seconds, so the worker can be killed in the middle."""
    root.mkdir()
    files = []
    for i in range(8):
        paragraphs = [f"Section {i}.{j}: " + " ".join(f"word{(i * 31 + j * 7 + k) % 997}" for k in range(90))
                      for j in range(12)]
        path = root / f"guide-{i}.md"
        path.write_text(f"# Guide {i}\n\n" + "\n\n".join(paragraphs))
        files.append(path)
    return files


def _stage(db: Session, tenant_id: str, files: list[Path], queue: str | None) -> str:
    from app.bootstrap import container
    from workers.ingest import submit, upload_prefix

    job_id = uuid.uuid4().hex
    for f in files:
        container().object_store.put(upload_prefix(tenant_id, job_id) + f.name, f.read_bytes())
    db.add(IngestionJob(id=job_id, tenant_id=tenant_id, status="queued", total_files=len(files)))
    db.commit()
    if queue:
        submit(container(), job_id, queue=queue)
    return job_id


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, "killed processes are still alive"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether any thread of `pid` is still running. Not the leader's state alone: a killed process's leader
    turns zombie while its other threads (onnxruntime's) are still exiting, and until the last one has, the
    process's files, and the vector store's lock with them, are still open. A zombie (not reaped: its parent
    was killed too) holds nothing."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    return any(_state(task / "stat") not in ("Z", "X") for task in tasks)


def _state(stat: Path) -> str:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _points(db: Session, tenant_id: str) -> dict[str, tuple[int, int]]:
    """Per document path: (chunk rows, points in the store for that document row)."""
    from app.bootstrap import container

    store = container().vector_store
    out = {}
    for doc in db.scalars(select(Document).where(Document.tenant_id == tenant_id)):
        rows = len(list(db.scalars(select(Chunk.id).where(Chunk.document_id == doc.id))))
        out[doc.path] = (rows, store.count(tenant_id, {"document_id": doc.id}))
    return out


@pytest.mark.redis
@pytest.mark.postgres
def test_a_worker_killed_mid_job_then_rerun_leaves_the_same_points_as_a_clean_run(
    graph: Graph, pg_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    import redis
    from sqlalchemy.orm import sessionmaker

    from app.bootstrap import container
    from app.db import make_engine
    from workers.ingest import run_ingestion_job

    # Small embedder calls: documents are written one by one, so the kill after two lands with six to go (with
    # the default 256 texts per call, this pack's ~150 chunks are embedded in one call and written together).
    # The worker process is started with `env`; this process's graph has the same settings.
    env = {"DATABASE_URL": pg_url, "REDIS_URL": REDIS_TEST_URL, "SWITCHBOARD_BUS_NAMESPACE": redis_namespace,
           "SWITCHBOARD_INGEST_CALL_TEXTS": "8"}
    graph.configure(database_url=pg_url, redis_url=REDIS_TEST_URL, bus_namespace=redis_namespace,
                    ingest_call_texts=8)
    files = _big_pack(tmp_path / "pack")
    killed, clean = f"kill{uuid.uuid4().hex[:8]}", f"clean{uuid.uuid4().hex[:8]}"
    queue = f"sbtest-ingest-{uuid.uuid4().hex[:8]}"
    engine = make_engine(pg_url)
    connection = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        with sessionmaker(bind=engine)(info={"cross_tenant": "tests"}) as db:
            db.add_all([Tenant(id=t, slug=t, name=t) for t in (killed, clean)])
            db.commit()
            job_id = _stage(db, killed, files, queue)

        worker = subprocess.Popen(
            [sys.executable, "-c", f"from workers.ingest import main; main([{queue!r}])"],
            cwd=REPO, env={**os.environ, **env, "SWITCHBOARD_HOME": str(graph.home)}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        stream = f"{redis_namespace}:events:{killed}"
        deadline = time.monotonic() + 240
        done = 0
        while done < 2:  # two of eight files indexed: the job is half-way
            assert worker.poll() is None and time.monotonic() < deadline, "the worker did not make progress"
            entries: list[tuple[bytes, dict[bytes, bytes]]] = connection.xrange(stream)  # type: ignore[assignment]
            events = [json.loads(fields[b"body"]) for _, fields in entries]
            done = max([e["files_done"] for e in events if e["status"] == "indexed"], default=0)
            time.sleep(0.05)
        # The worker and its work-horse (RQ forks one per job into a session of its own).
        doomed = [worker.pid, *_descendants(worker.pid)]
        assert len(doomed) >= 2, "expected RQ's work-horse process"
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        worker.wait(30)
        _wait_gone(doomed)

        with sessionmaker(bind=engine)(info={"cross_tenant": "tests"}) as db:
            job = db.get_one(IngestionJob, job_id)
            assert job.status == "running" and job.pack_version == 1
        # The dead process's lock on the embedded store is gone: this process can open it.
        partial = container().vector_store.count(killed)
        assert partial > 0

        run_ingestion_job(job_id, container().knowledge)  # the rerun, as RQ or an operator would do it
        with sessionmaker(bind=engine)(info={"cross_tenant": "tests"}) as db:
            clean_job = _stage(db, clean, files, None)
        run_ingestion_job(clean_job, container().knowledge)

        with sessionmaker(bind=engine)(info={"cross_tenant": "tests"}) as db:
            assert db.get_one(IngestionJob, job_id).status == "succeeded"
            after_rerun, after_clean = _points(db, killed), _points(db, clean)
        assert after_rerun == after_clean and len(after_rerun) == 8
        assert all(rows == points > 0 for rows, points in after_rerun.values())
        store = container().vector_store
        total = sum(rows for rows, _ in after_clean.values())
        assert store.count(killed) == store.count(clean) == total > partial
        assert store.count(killed, {"pack_version": 1}) == total
    finally:
        connection.delete(*(list(connection.scan_iter(f"rq:*{queue}*")) or [b"_none"]))
        connection.close()
        engine.dispose()

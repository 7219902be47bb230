"""Knowledge uploads through the admin API: refused uploads leave nothing behind; accepted ones run as a job
(embedded: this process's ingestion thread; scale-out: an RQ worker on the real Redis) to real chunks and
vectors, and a deleted document takes its vectors with it (and the grounding check's kept vectors of its passages)."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.assistant.passage_units import StoredVectors
from app.bootstrap import container
from app.db import session_scope
from app.knowledge.ids import passage_digest
from app.models import Chunk, PassageVectors
from tests.admin.conftest import TenantKeys
from tests.conftest import REDIS_TEST_URL, REPO, Graph

PACK = REPO / "tenants" / "northwind" / "knowledge"


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Ingestion loads the embedder: once, on SQLite, is enough here (the scoping tests cover Postgres)."""
    return request.param  # type: ignore[no-any-return]


def _chunk_text(tenant_id: str, document_id: str) -> str:
    with session_scope(cross_tenant="tests") as session:
        return session.scalars(select(Chunk.text).where(Chunk.tenant_id == tenant_id,
                                                        Chunk.document_id == document_id)).first() or ""


def _kept_digests(tenant_id: str) -> set[str]:
    with session_scope(cross_tenant="tests") as session:
        return set(session.scalars(select(PassageVectors.digest).where(PassageVectors.tenant_id == tenant_id)))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _wait(client: TestClient, keys: TenantKeys, job_id: str, budget_s: float = 240) -> dict[str, Any]:
    """Poll the status endpoint until the job finishes (bounded; the test asserts outcomes, not timings)."""
    deadline = time.monotonic() + budget_s
    while True:
        job = client.get(f"/admin/v1/knowledge/jobs/{job_id}", headers=keys.headers()).json()
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)


def _nothing_stored(client: TestClient, keys: TenantKeys) -> None:
    from app.bootstrap import container

    assert client.get("/admin/v1/knowledge/jobs", headers=keys.headers()).json()["jobs"] == []
    assert container().object_store.list(f"{keys.id}/") == []
    audit = client.get("/admin/v1/audit", headers=keys.headers(), params={"action": "knowledge.uploaded"})
    assert audit.json()["events"] == []


def test_refused_uploads_leave_nothing_behind(
    client: TestClient, tenant_a: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.config import get_settings

    h = tenant_a.headers()
    url = "/admin/v1/knowledge"
    faq = (PACK / "faq.csv").read_bytes()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": {"files": ["faq.csv"]}}, 415, "multipart/form-data"),
        ({"files": {"files": ("tool.exe", b"MZ\x90\x00")}}, 415, "unsupported type '.exe'"),
        ({"files": {"files": ("pack.zip", b"PK\x03\x04 this is not really a zip")}}, 422, "not a readable zip"),
        ({"data": {"note": "no files here"}, "files": {"x": ("", b"")}}, 422, "no files"),
        ({"files": {"files": ("pack.zip", _zip({"logo.png": b"\x89PNG", "a.exe": b"MZ"}))}}, 415,
         "nothing to ingest"),
        ({"files": {"files": ("pack.zip", _zip({"../../etc/evil.md": b"# evil"}))}}, 422, "unsafe path"),
        ({"files": {"files": ("pack.zip", _zip({}))}}, 422, "empty zip"),
        ({"files": [("files", ("faq.csv", faq)), ("files", ("faq.csv", faq))]}, 422, "two files are named"),
        ({"files": {"files": ("empty.md", b"  \n")}}, 422, "empty file"),
        ({"content": b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.md\"\r\n\r\n# A",
          "headers": {**h, "Content-Type": "multipart/form-data; boundary=xyz"}}, 400, "malformed multipart"),
    ]
    for kwargs, status, message in cases:
        kwargs.setdefault("headers", h)
        r = client.post(url, **kwargs)
        assert r.status_code == status, (kwargs, r.text)
        assert message in r.json()["detail"], r.json()["detail"]

    # Oversize: refused from Content-Length at once, and while streaming when no length is declared.
    monkeypatch.setattr(get_settings(), "max_upload_bytes", 4096)  # the operator's limit, as the routes read it
    r = client.post(url, headers=h, files={"files": ("faq.csv", faq)})
    assert r.status_code == 413 and "MAX_UPLOAD_BYTES" in r.json()["detail"]

    body = (b"--b0\r\nContent-Disposition: form-data; name=\"files\"; filename=\"faq.csv\"\r\n"
            b"Content-Type: text/csv\r\n\r\n" + faq + b"\r\n--b0--\r\n")
    streamed: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 1024):
            streamed.append(i)
            yield body[i:i + 1024]

    r = client.post(url, headers={**h, "Content-Type": "multipart/form-data; boundary=b0"}, content=chunks())
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
    # A zip under the limit that expands far beyond it (a zip bomb) is refused too.
    bomb = _zip({"big.txt": b"a" * (4096 * 11)})
    assert len(bomb) < 4096
    r = client.post(url, headers=h, files={"files": ("bomb.zip", bomb)})
    assert r.status_code == 413 and "expands to more than" in r.json()["detail"]
    _nothing_stored(client, tenant_a)


def test_upload_is_ingested_by_a_job_and_documents_can_be_deleted(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys
) -> None:
    from app.bootstrap import container

    h = tenant_a.headers()
    pack_zip = _zip({
        "northwind/returns-and-refunds.md": (PACK / "returns-and-refunds.md").read_bytes(),
        "northwind/warranty.md": (PACK / "warranty.md").read_bytes(),
        "northwind/logo.png": b"\x89PNG\r\n",
        "northwind/broken.csv": b"question,answer\n\"unterminated,\n",
        "__MACOSX/._warranty.md": b"junk",
    })
    r = client.post("/admin/v1/knowledge", headers=h, files=[
        ("files", ("faq.csv", (PACK / "faq.csv").read_bytes(), "text/csv")),
        ("files", ("pack.zip", pack_zip, "application/zip")),
    ])
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "queued"
    assert accepted["status_url"] == f"/admin/v1/knowledge/jobs/{accepted['job_id']}"
    assert sorted(accepted["files"]) == ["broken.csv", "faq.csv", "returns-and-refunds.md", "warranty.md"]
    assert [s["file"] for s in accepted["skipped"]] == ["logo.png"]
    # Tenant B cannot see the job, even while it runs.
    assert client.get(accepted["status_url"], headers=tenant_b.headers()).status_code == 404

    job = _wait(client, tenant_a, accepted["job_id"])
    assert job["status"] == "succeeded", job
    assert job["total_files"] == 4 and job["done_files"] == 4
    assert job["chunks"] > 30  # ~56 FAQ pairs, one chunk each, plus the two documents
    refused = {e["file"]: e["reason"] for e in job["errors"]}
    assert set(refused) == {"logo.png", "broken.csv"} and "unsupported type" in refused["logo.png"]
    assert job["finished_at"] is not None

    docs = client.get("/admin/v1/knowledge/documents", headers=h).json()["documents"]
    indexed = {d["path"]: d for d in docs if d["status"] == "indexed"}
    assert set(indexed) == {"faq.csv", "returns-and-refunds.md", "warranty.md"}
    assert sum(d["chunks"] for d in indexed.values()) == job["chunks"]
    assert indexed["faq.csv"]["kind"] == "faq" and indexed["warranty.md"]["title"]
    # Staged upload objects go right after the job is recorded done (the ingester keeps its own copy of each
    # file): the job's status is committed first, so a reader may see it a moment before the cleanup.
    deadline = time.monotonic() + 30
    while container().object_store.list(f"{tenant_a.id}/uploads/") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert container().object_store.list(f"{tenant_a.id}/uploads/") == []

    store = container().vector_store
    warranty = indexed["warranty.md"]
    assert store.count(tenant_a.id, {"document_id": warranty["id"]}) == warranty["chunks"] > 0
    # The grounding check keeps the vectors of passages it cited: one of warranty.md's, one of faq.csv's (and B
    # kept the same warranty text in a pack of its own).
    cited = {path: _chunk_text(tenant_a.id, indexed[path]["id"]) for path in ("warranty.md", "faq.csv")}
    for tenant_id, text in ((tenant_a.id, cited["warranty.md"]), (tenant_a.id, cited["faq.csv"]),
                            (tenant_b.id, cited["warranty.md"])):
        StoredVectors("test-model/2").save(tenant_id, passage_digest(text), np.ones((3, 2), dtype=np.float32))
    # B cannot delete A's document; A can, and its vectors and stored file go with it.
    assert client.delete(f"/admin/v1/knowledge/documents/{warranty['id']}",
                         headers=tenant_b.headers()).status_code == 404
    assert store.count(tenant_a.id, {"document_id": warranty["id"]}) == warranty["chunks"]
    assert client.delete(f"/admin/v1/knowledge/documents/{warranty['id']}", headers=h).status_code == 204
    assert store.count(tenant_a.id, {"document_id": warranty["id"]}) == 0
    assert store.count(tenant_a.id) == job["chunks"] - warranty["chunks"]
    assert _kept_digests(tenant_a.id) == {passage_digest(cited["faq.csv"])}
    assert _kept_digests(tenant_b.id) == {passage_digest(cited["warranty.md"])}
    assert not [k for k in container().object_store.list(f"{tenant_a.id}/") if k.endswith("warranty.md")]
    left = client.get("/admin/v1/knowledge/documents", headers=h).json()["documents"]
    assert "warranty.md" not in {d["path"] for d in left}
    assert client.delete(f"/admin/v1/knowledge/documents/{warranty['id']}", headers=h).status_code == 404
    actions = [e["action"] for e in client.get("/admin/v1/audit", headers=h).json()["events"]]
    assert actions[:4] == ["document.deleted", "knowledge.job_succeeded", "knowledge.version_promoted",
                           "knowledge.uploaded"]


@pytest.mark.redis
def test_scale_out_upload_is_run_by_an_rq_worker(
    client: TestClient, tenant_a: TenantKeys, graph: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis
    from rq import Queue, SimpleWorker

    import workers.ingest as ingest

    queue = f"sbtest-ingest-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(ingest, "QUEUE", queue)
    from app import bootstrap

    old = container()
    # This process now submits to RQ; the stores stay the ones it has open (qdrant-edge locks its folder). The
    # app's routes use the new container, and so does the RQ worker's job (the process's).
    scaled = bootstrap.Container(graph.settings(redis_url=REDIS_TEST_URL), embedder=old.embedder,
                                 vector_store=old.vector_store, object_store=old.object_store)
    monkeypatch.setattr(client.app.state, "container", scaled)  # type: ignore[attr-defined]
    bootstrap.install(scaled)
    connection = redis.Redis.from_url(REDIS_TEST_URL)
    job_id = "none"
    try:
        r = client.post("/admin/v1/knowledge", headers=tenant_a.headers(),
                        files={"files": ("shipping-policy.md", (PACK / "shipping-policy.md").read_bytes())})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        # Queued in Redis, not run by a thread of this process.
        q = Queue(queue, connection=connection)
        assert q.job_ids == [f"ingest-{job_id}"]
        assert client.get(r.json()["status_url"], headers=tenant_a.headers()).json()["status"] == "queued"
        SimpleWorker([q], connection=connection).work(burst=True)
        job = client.get(r.json()["status_url"], headers=tenant_a.headers()).json()
        assert job["status"] == "succeeded", job
        assert job["chunks"] > 0 and job["done_files"] == 1
        # Running it again (a redelivery) changes nothing.
        ingest.run_ingestion_job(job_id, container().knowledge)
        assert client.get(r.json()["status_url"], headers=tenant_a.headers()).json() == job
    finally:
        keys = [k for pattern in (f"rq:*{queue}*", f"rq:*ingest-{job_id}*")
                for k in connection.scan_iter(pattern, count=1000)]
        if keys:
            connection.delete(*keys)
        connection.close()
        bootstrap.install(old)
        for shared in ("embedder", "vector_store", "object_store"):  # old's: closed with the test's graph
            scaled.use(shared, None)
        scaled.close()


def test_versions_through_the_api_build_promote_roll_back_and_delete_everywhere(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys
) -> None:
    from app.bootstrap import container

    h = tenant_a.headers()
    warranty = (PACK / "warranty.md").read_bytes()
    first = client.post("/admin/v1/knowledge", headers=h, data={"category": "policies", "language": "en"},
                        files={"files": ("warranty.md", warranty)}).json()
    assert _wait(client, tenant_a, first["job_id"])["pack_version"] == 1
    faq = (PACK / "faq.csv").read_bytes()
    second = client.post("/admin/v1/knowledge", headers=h, data={"version_only": "true"},
                         files={"files": ("faq.csv", faq)})
    job = _wait(client, tenant_a, second.json()["job_id"])
    assert job["status"] == "succeeded" and job["pack_version"] == 2 and "version 2 ready" in job["detail"]

    listed = client.get("/admin/v1/knowledge/versions", headers=h).json()
    assert listed["live_version"] == 1
    assert [(v["version"], v["status"]) for v in listed["versions"]] == [(2, "ready"), (1, "live")]
    assert listed["versions"][0]["documents"] == 2 and listed["versions"][0]["embedded"] < listed["versions"][0][
        "chunks"]  # warranty.md was carried forward, not embedded again
    docs = client.get("/admin/v1/knowledge/documents", headers=h, params={"pack_version": 1}).json()["documents"]
    assert docs[0]["meta"] == {"category": "policies", "language": "en"}

    # Tenant B sees none of it and cannot promote A's version.
    assert client.get("/admin/v1/knowledge/versions", headers=tenant_b.headers()).json()["versions"] == []
    assert client.post("/admin/v1/knowledge/versions/2/promote", headers=tenant_b.headers()).status_code == 404
    assert client.post("/admin/v1/knowledge/rollback", headers=tenant_b.headers()).status_code == 409

    promoted = client.post("/admin/v1/knowledge/versions/2/promote", headers=h).json()
    assert promoted["live_version"] == 2
    rolled = client.post("/admin/v1/knowledge/rollback", headers=h)
    assert rolled.status_code == 200 and rolled.json()["live_version"] == 1
    again = client.post("/admin/v1/knowledge/rollback", headers=h)
    assert again.status_code == 409 and "no earlier live version" in again.json()["detail"]
    assert client.post("/admin/v1/knowledge/versions/7/promote", headers=h).status_code == 404

    # Deleting the warranty removes it from both versions: vectors, stored file, cached vectors.
    store = container().vector_store
    assert store.count(tenant_a.id, {"document": "warranty.md"}) > 0
    r = client.delete(f"/admin/v1/knowledge/documents/{docs[0]['id']}", headers=h)
    assert r.status_code == 204
    assert store.count(tenant_a.id, {"document": "warranty.md"}) == 0
    assert store.count(tenant_a.id, {"document": "faq.csv"}) > 0
    left = container().object_store.list(f"{tenant_a.id}/knowledge/")
    assert not [k for k in left if k.endswith("warranty.md")]
    assert len([k for k in left if "/vectors/" in k and ".view-" not in k]) == 1  # only faq.csv's remain
    remaining = client.get("/admin/v1/knowledge/documents", headers=h).json()["documents"]
    assert {d["path"] for d in remaining} == {"faq.csv"}
    # The FAQ's cached vectors include its question view; deleting it leaves no stored object at all.
    assert client.delete(f"/admin/v1/knowledge/documents/{remaining[0]['id']}", headers=h).status_code == 204
    assert container().object_store.list(f"{tenant_a.id}/knowledge/") == []
    assert store.count(tenant_a.id) == 0
    bad = client.post("/admin/v1/knowledge", headers=h, data={"replace": "maybe"}, files={"files": ("a.md", b"# A")})
    assert bad.status_code == 422 and "'replace' must be true or false" in bad.json()["detail"]

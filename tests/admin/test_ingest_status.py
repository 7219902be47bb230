"""The admin API's ingestion job status reports progress while the job runs: bytes done of the total, chunks/s,
the ETA and the phase. The job is held at a known point (its term statistics, after every file is written) by
an embedder whose tokenizer waits for the test, so what is checked does not depend on timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.admin.conftest import TenantKeys
from tests.conftest import REPO

PACK = REPO / "tenants" / "northwind" / "knowledge"


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


class HeldTokenizer:
    """The real embedder, except that counting term statistics (`tokens`, called once every file is written)
    waits until `release` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.dim, self.name = inner, inner.dim, inner.name
        self.reached, self.release = threading.Event(), threading.Event()

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)  # type: ignore[no-any-return]

    def embed_query_weighted(self, text: str, weight: Callable[[int], float]) -> tuple[list[float], list[float]]:
        return self.inner.embed_query_weighted(text, weight)  # type: ignore[no-any-return]

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        self.reached.set()
        assert self.release.wait(60), "the test never released the job"
        return self.inner.tokens(texts)  # type: ignore[no-any-return]


def _get(client: TestClient, keys: TenantKeys, job_id: str) -> dict[str, Any]:
    return client.get(f"/admin/v1/knowledge/jobs/{job_id}", headers=keys.headers()).json()  # type: ignore[no-any-return]


def test_a_running_job_reports_bytes_rate_eta_and_phase(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys
) -> None:
    from app.bootstrap import container

    # The embedder ingestion uses (its own copy when it truncates elsewhere than the answering one, the default).
    held = HeldTokenizer(container().ingest_embedder)
    old = container().use("ingest_embedder", held)
    try:
        files = [("files", (name, (PACK / name).read_bytes(), "text/markdown"))
                 for name in ("returns-and-refunds.md", "warranty.md")]
        total = sum(len(f[1][1]) for f in files)
        r = client.post("/admin/v1/knowledge", headers=tenant_a.headers(), files=files)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert held.reached.wait(240), "the job never reached its term statistics"
        job = _get(client, tenant_a, job_id)
        assert job["status"] == "running" and job["done_files"] == job["total_files"] == 2
        progress = job["progress"]
        assert progress["phase"] == "finishing" and progress["eta_s"] == 0.0
        assert progress["bytes_done"] == progress["bytes_total"] == total
        assert progress["chunks_per_s"] > 0 and progress["elapsed_s"] > 0 and progress["embedded"] == job["chunks"] > 0
        # Another tenant sees nothing of it.
        assert client.get(f"/admin/v1/knowledge/jobs/{job_id}", headers=tenant_b.headers()).status_code == 404
    finally:
        held.release.set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and _get(client, tenant_a, job_id)["status"] == "running":
            time.sleep(0.2)
        container().use("ingest_embedder", old)
    job = _get(client, tenant_a, job_id)
    assert job["status"] == "succeeded" and job["progress"] is None  # the row has the outcome; no live progress

"""Finding 8, hostile knowledge files: a zip member was expanded to 120 MB before the per-file limit refused it,
and a PDF decompression bomb failed the whole ingestion job. Now a member is refused on its declared size, or
while it is unpacked as soon as it passes MAX_FILE_BYTES (never more than the limit and one read chunk in
memory), and whatever a parser raises on one file is that file's failure, reported with its reason."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import UploadFile

from tests.admin import conftest as admin_fixtures
from tests.admin.conftest import TenantKeys

# The admin API fixtures (an embedded app, tenants with their keys), shared with tests/admin.
client, tenant_a = admin_fixtures.client, admin_fixtures.tenant_a

MiB = 1024 * 1024
GOOD = b"# Returns\n\nYou can return any unworn item within 30 days for a full refund.\n"


@pytest.fixture
def backend() -> str:
    return "sqlite"  # ingestion loads the embedder; the database plays no part in these limits


def _zip_with_big_member(name: str, size: int, **others: bytes) -> bytes:
    """A zip whose member `name` unpacks to `size` bytes, written in 1 MiB pieces (it is about 1000x smaller)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as member:
            for _ in range(size // MiB):
                member.write(b"a" * MiB)
        for other, data in others.items():
            zf.writestr(other, data)
    return buf.getvalue()


class CountingReader:
    """A stream that counts the bytes taken from it."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.taken = stream, 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.stream.read(n)
        self.taken += len(data)
        return data


def _deflated(head: bytes, padding: int) -> bytes:
    squeeze = zlib.compressobj(9)
    parts = [squeeze.compress(head)]
    for _ in range(padding // MiB):
        parts.append(squeeze.compress(b" " * MiB))
    return b"".join([*parts, squeeze.flush()])


def _pdf_bomb(expands_to: int = 80 * MiB) -> bytes:
    """A valid PDF (about 80 KB) whose page tree sits in a compressed object stream padded to `expands_to`
    bytes: opening its pages makes pypdf unpack past its limits (the red team's decompression bomb)."""
    pages = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"
    index = b"2 0 3 %d " % (len(pages) + 1)
    stream = _deflated(index + pages + b" " + page, expands_to)
    out = io.BytesIO()
    out.write(b"%PDF-1.5\n")
    catalog_at = out.tell()
    out.write(b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n")
    objstm_at = out.tell()
    out.write(b"4 0 obj\n<< /Type /ObjStm /N 2 /First %d /Length %d /Filter /FlateDecode >>\nstream\n"
              % (len(index), len(stream)) + stream + b"\nendstream\nendobj\n")
    xref_at = out.tell()
    rows = [(0, 0, 65535), (1, catalog_at, 0), (2, 4, 0), (2, 4, 1), (1, objstm_at, 0), (1, xref_at, 0)]
    table = b"".join(struct.pack(">BIH", *row) for row in rows)
    out.write(b"5 0 obj\n<< /Type /XRef /Size 6 /W [1 4 2] /Root 1 0 R /Length %d >>\nstream\n" % len(table)
              + table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at)
    return out.getvalue()


def _wait(client: TestClient, keys: TenantKeys, job_id: str, budget_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + budget_s
    while True:
        job = client.get(f"/admin/v1/knowledge/jobs/{job_id}", headers=keys.headers()).json()
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)


def test_finding8_zip_member_past_the_file_limit_is_refused_with_its_reason(client: TestClient,
                                                                          tenant_a: TenantKeys) -> None:
    from app.bootstrap import container

    h = tenant_a.headers()
    pack = _zip_with_big_member("big.md", 120 * MiB, **{"returns.md": GOOD})
    assert len(pack) < MiB
    r = client.post("/admin/v1/knowledge", headers=h, files={"files": ("pack.zip", pack)})
    assert r.status_code == 202, r.text
    assert r.json()["files"] == ["returns.md"]
    [skipped] = r.json()["skipped"]
    assert skipped["file"] == "big.md" and "MAX_FILE_BYTES" in skipped["reason"] and "120.0 MiB" in skipped["reason"]

    alone = _zip_with_big_member("big.md", 120 * MiB)
    refused = client.post("/admin/v1/knowledge", headers=h, files={"files": ("alone.zip", alone)})
    assert refused.status_code == 413 and "big.md: too large" in refused.json()["detail"]
    staged = container().object_store.list(f"{tenant_a.id}/uploads/")
    assert not [key for key in staged if key.endswith("big.md")]


def test_finding8_zip_member_is_never_expanded_past_the_limit(sb_home: Any) -> None:
    from app.admin.uploads import collect
    from app.config import get_settings
    from app.knowledge.collect import READ_CHUNK, read_capped
    from app.knowledge.collect import collect as collect_pack

    limit = get_settings().max_file_bytes
    pack = _zip_with_big_member("big.md", 120 * MiB, **{"returns.md": GOOD})

    # The reader stops at the limit plus at most one chunk, whatever the member holds; within the limit it
    # returns the member whole.
    with zipfile.ZipFile(io.BytesIO(pack)) as zf, zf.open("big.md") as member:
        counted = CountingReader(member)
        assert read_capped(counted, limit) is None
        assert limit < counted.taken <= limit + READ_CHUNK
        assert read_capped(io.BytesIO(GOOD), len(GOOD)) == GOOD

    # Upload and CLI paths: the 120 MB member costs far less memory than the limit (it is refused on its
    # declared size, before any of it is unpacked).
    tracemalloc.start()
    try:
        upload = asyncio.run(collect([UploadFile(io.BytesIO(pack), filename="pack.zip")], 50 * MiB))
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        (sb_home.parent / "pack.zip").write_bytes(pack)
        files, errors = collect_pack([sb_home.parent / "pack.zip"], limit)
        _, cli_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [name for name, _ in upload.files] == ["returns.md"]
    assert [s["file"] for s in upload.skipped] == ["big.md"]
    assert [f.path for f in files] == ["returns.md"] and [e.file for e in errors] == ["big.md"]
    assert upload_peak < 8 * MiB and cli_peak < 8 * MiB, (upload_peak, cli_peak)


def test_finding8_pdf_bomb_is_that_files_failure(sb_home: Any) -> None:
    from app.knowledge.parse import ParseError, SourceFile, parse

    with pytest.raises(ParseError, match="decompression bomb"):
        parse(SourceFile("bomb.pdf", _pdf_bomb()))
    with pytest.raises(ParseError, match="PDF"):
        parse(SourceFile("bogus.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\n%%EOF"))


def test_finding8_pack_with_a_pdf_bomb_ingests_the_good_file_and_reports_the_bad(client: TestClient,
                                                                                 tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    r = client.post("/admin/v1/knowledge", headers=h, files=[
        ("files", ("bomb.pdf", _pdf_bomb(), "application/pdf")),
        ("files", ("bogus.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\nthis is not a PDF body at all\n", "application/pdf")),
        ("files", ("returns.md", GOOD, "text/markdown")),
    ])
    assert r.status_code == 202, r.text
    job = _wait(client, tenant_a, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    refused = {e["file"]: e["reason"] for e in job["errors"]}
    assert set(refused) == {"bomb.pdf", "bogus.pdf"}, refused
    assert "decompression bomb" in refused["bomb.pdf"]
    docs = client.get("/admin/v1/knowledge/documents", headers=h).json()["documents"]
    assert {d["path"] for d in docs if d["status"] == "indexed"} == {"returns.md"}

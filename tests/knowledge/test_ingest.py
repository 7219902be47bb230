"""Ingestion and retrieval end to end in embedded mode: SQLite, qdrant-edge, local object store, the real
MiniLM model. Postgres is covered by the same service code through the shared fixtures elsewhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.bootstrap import container
from app.knowledge.ids import chunk_id
from app.knowledge.indexing import object_key
from app.knowledge.reporting import IngestProgress
from app.knowledge.service import ingest_paths
from app.models import Chunk, Document, IngestionJob, Tenant

SHIPPING = """# Shipping

## Delivery times

Standard delivery inside the country takes three to six business days after the parcel leaves our warehouse.
Express delivery arrives within two business days.

## International orders

We ship to Canada, the UK and the EU. International parcels take seven to fourteen business days and customs
duties are paid by the recipient.
"""

RETURNS = """# Returns and refunds

You can send back unworn items within 30 days of delivery for a full refund. Print the prepaid label from your
account, pack the items in their original packaging and drop the parcel at any post office.

Refunds go back to the original payment method within five business days of the return arriving at our warehouse.
"""

WARRANTY = """Every jacket carries a two-year warranty against manufacturing defects such as broken zips, failed seams
and delaminating fabric. Damage from accidents, wear and tear or improper washing is not covered."""

FAQ = (
    "question,answer\n"
    'Do you accept PayPal?,"Yes, we accept PayPal, Visa, Mastercard and American Express at checkout."\n'
    'Can I change my delivery address?,"You can change the address within 30 minutes of ordering, from the '
    'Orders page of your account."\n'
    'Do you have gift cards?,"Digital gift cards from $25 to $500 are sold on our website and never expire."\n'
)


@pytest.fixture
def db(sb_home: Path) -> Iterator[Session]:
    from app.db import get_sessionmaker, migrate

    migrate()
    with get_sessionmaker()(info={"cross_tenant": "tests"}) as session:
        for slug in ("acme", "globex"):
            session.add(Tenant(id=slug, slug=slug, name=slug.title()))
        session.commit()
        yield session


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    root = tmp_path / "pack"
    (root / "policies").mkdir(parents=True)
    (root / "shipping.md").write_text(SHIPPING)
    (root / "policies" / "returns.md").write_text(RETURNS)
    (root / "warranty.txt").write_text(WARRANTY)
    (root / "faq.csv").write_text(FAQ)
    return root


def add_bad_files(root: Path) -> None:
    (root / "manual.pdf").write_bytes(b"%PDF-1.4")
    (root / "broken.json").write_text('[{"question": "x", "answer": "y"},')
    (root / "garbled.txt").write_bytes(b"price: 10 \x81\x8d\x90 (not any text encoding)")
    (root / "empty.md").write_text("")


def test_ingest_indexes_good_files_and_refuses_bad_ones_with_reasons(db: Session, pack: Path) -> None:
    add_bad_files(pack)
    seen: list[IngestProgress] = []
    report = ingest_paths(db, "acme", [pack], progress=seen.append, deps=container().knowledge)
    db.commit()

    assert sorted(report.files_ok) == ["faq.csv", "policies/returns.md", "shipping.md", "warranty.txt"]
    reasons = {f["file"]: f["reason"] for f in report.files_failed}
    assert set(reasons) == {"manual.pdf", "broken.json", "garbled.txt", "empty.md"}
    assert reasons["manual.pdf"].startswith("corrupt PDF")
    assert "invalid JSON" in reasons["broken.json"]
    assert "not UTF-8, UTF-16 or Windows-1252" in reasons["garbled.txt"]
    assert reasons["empty.md"] == "file is empty"
    assert report.documents == 4 and report.pack_version == 1
    assert json.loads(json.dumps(report.to_dict()))["chunks"] == report.chunks

    # Rows, points and raw files agree.
    docs = {d.path: d for d in db.scalars(select(Document).where(Document.tenant_id == "acme"))}
    assert set(docs) == set(report.files_ok)
    assert docs["faq.csv"].kind == "faq" and docs["shipping.md"].title == "Shipping"
    n_chunks = db.scalar(select(func.count()).select_from(Chunk).where(Chunk.tenant_id == "acme"))
    assert n_chunks == report.chunks
    faq_chunks = db.scalars(select(Chunk).where(Chunk.document_id == docs["faq.csv"].id).order_by(Chunk.ordinal))
    assert [c.text.split("\n")[0] for c in faq_chunks] == [
        "Q: Do you accept PayPal?",
        "Q: Can I change my delivery address?",
        "Q: Do you have gift cards?",
    ]

    assert container().vector_store.count("acme") == report.chunks
    assert container().object_store.get(object_key("acme", 1, "policies/returns.md")) == RETURNS.encode()
    raw = [k for k in container().object_store.list("acme/") if "/vectors/" not in k]
    assert raw == sorted(object_key("acme", 1, p) for p in report.files_ok)
    assert {d.vectors_key for d in docs.values()} <= set(container().object_store.list("acme/knowledge/vectors/"))
    assert report.status == "live" and report.promoted and db.get_one(Tenant, "acme").live_pack_version == 1

    job = db.get(IngestionJob, report.job_id)
    assert job is not None and job.status == "succeeded"
    assert job.total_files == 8 and job.done_files == 8 and job.chunks == report.chunks
    assert {e["file"] for e in job.errors} == set(reasons)
    assert [p.files_done for p in seen] == list(range(1, 9)) and seen[-1].chunks == report.chunks


def test_each_ingest_builds_a_new_version_and_an_updated_file_replaces_only_itself(db: Session, pack: Path) -> None:

    store = container().vector_store
    first = ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    second = ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    assert (first.pack_version, second.pack_version) == (1, 2)
    assert second.chunks == first.chunks and second.embedded == 0
    assert store.count("acme", {"pack_version": 2}) == first.chunks
    assert db.get_one(Tenant, "acme").live_pack_version == 2

    # One changed file uploaded alone: version 3 = that file + every other live document carried forward.
    before = store.count("acme", {"document": "shipping.md", "pack_version": 2})
    assert before >= 2
    (pack / "shipping.md").write_text("# Shipping\n\nWe now only offer free pickup in store.\n")
    third = ingest_paths(db, "acme", [pack / "shipping.md"], deps=container().knowledge)
    db.commit()
    assert third.files_ok == ["shipping.md"]
    assert sorted(third.files_carried) == ["faq.csv", "policies/returns.md", "warranty.txt"]
    assert third.embedded == 1 and third.chunks == 1 and third.version_chunks == first.chunks - before + 1
    assert store.count("acme", {"pack_version": 3}) == third.version_chunks
    assert store.count("acme", {"pack_version": 3, "document": "shipping.md"}) == 1
    shipping = db.scalar(select(Document).where(Document.path == "shipping.md", Document.pack_version == 3))
    assert shipping is not None
    rows = list(db.scalars(select(Chunk).where(Chunk.document_id == shipping.id)))
    assert [(r.id, r.text) for r in rows] == [
        (chunk_id("acme", 3, "shipping.md", 0), "We now only offer free pickup in store.")
    ]
    passages = container().retriever("acme", "international delivery times", top_k=5,
                        filters={"document": "shipping.md", "pack_version": 3})
    assert [p.text for p in passages] == ["We now only offer free pickup in store."]
    # The earlier version is untouched (rollback target).
    assert store.count("acme", {"pack_version": 2, "document": "shipping.md"}) == before


@pytest.mark.parametrize(
    ("question", "document"),
    [
        ("how many days until my parcel arrives?", "shipping.md"),
        ("do you deliver to England and what about import taxes", "shipping.md"),
        ("I want my money back for shoes I never wore", "policies/returns.md"),
        ("my zipper broke after a month, is that covered?", "warranty.txt"),
        ("can I pay with paypal", "faq.csv"),
        ("I typed the wrong address on my order", "faq.csv"),
    ],
)
def test_retrieval_finds_the_right_document_for_paraphrases(
    db: Session, pack: Path, question: str, document: str
) -> None:
    ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    passages = container().retriever("acme", question, top_k=3)
    assert passages[0].document == document
    assert [p.rank for p in passages] == [1, 2, 3]
    assert 0.2 < passages[0].score <= 1.0  # dense cosine, not an RRF number
    assert passages[0].chunk_id and passages[0].text


def test_tenant_isolation_through_retrieve(db: Session, pack: Path, tmp_path: Path) -> None:
    ingest_paths(db, "acme", [pack], deps=container().knowledge)
    other = tmp_path / "globex"
    other.mkdir()
    (other / "returns.md").write_text("# Returns\n\nGlobex accepts returns within 7 days, store credit only.\n")
    ingest_paths(db, "globex", [other], deps=container().knowledge)
    db.commit()

    globex = container().retriever(
        "globex", "You can send back unworn items within 30 days of delivery for a full refund", top_k=10)
    assert [p.document for p in globex] == ["returns.md"] and "Globex" in globex[0].text
    acme_ids = set(db.scalars(select(Chunk.id).where(Chunk.tenant_id == "acme")))
    assert not {p.chunk_id for p in globex} & acme_ids
    assert container().retriever("initech", "refund") == []
    with pytest.raises(ValueError, match="tenant_id"):
        container().retriever("", "refund")
    with pytest.raises(ValueError, match="unknown tenant"):
        ingest_paths(db, "initech", [pack], deps=container().knowledge)


def test_pack_versions_are_separate_and_filterable(db: Session, pack: Path) -> None:
    ingest_paths(db, "acme", [pack / "faq.csv"], deps=container().knowledge)
    (pack / "faq.csv").write_text("question,answer\nDo you accept PayPal?,No longer: cards only.\n")
    ingest_paths(db, "acme", [pack / "faq.csv"], deps=container().knowledge)
    db.commit()
    v1 = container().retriever("acme", "paypal", filters={"pack_version": 1})
    v2 = container().retriever("acme", "paypal", filters={"pack_version": 2})
    assert "Yes, we accept PayPal" in v1[0].text
    assert [p.text for p in v2] == ["Q: Do you accept PayPal?\nA: No longer: cards only."]


@pytest.mark.postgres
def test_ingest_on_postgres(sb_home: Path, pg_url: str, pack: Path) -> None:
    """Same service on the scale-out database: rows, unique (tenant, version, path) and re-ingest."""
    import uuid

    from sqlalchemy.orm import sessionmaker

    from app.db import make_engine

    tenant = f"pg-{uuid.uuid4().hex[:8]}"
    add_bad_files(pack)
    engine = make_engine(pg_url)
    try:
        with sessionmaker(bind=engine)(info={"cross_tenant": "tests"}) as session:
            session.add(Tenant(id=tenant, slug=tenant, name="PG"))
            session.commit()
            first = ingest_paths(session, tenant, [pack], deps=container().knowledge)
            session.commit()
            second = ingest_paths(session, tenant, [pack], deps=container().knowledge)
            session.commit()
            assert len(first.files_ok) == 4 and len(first.files_failed) == 4
            assert second.chunks == first.chunks
            count = select(func.count()).select_from(Chunk).where(Chunk.tenant_id == tenant)
            assert session.scalar(count) == first.chunks * 2
            jobs = session.scalars(select(IngestionJob.status).where(IngestionJob.tenant_id == tenant))
            assert list(jobs) == ["succeeded", "succeeded"]
            assert (first.pack_version, second.pack_version, second.embedded) == (1, 2, 0)
            assert container().retriever(tenant, "can I pay with paypal", top_k=1)[0].document == "faq.csv"
    finally:
        engine.dispose()

"""Pack versions in embedded mode (SQLite, qdrant-edge, local object store, the real MiniLM behind a counting
wrapper): a rebuild embeds only what changed, promotion and rollback switch the live version, a regressing
build is held back by the eval gate, a broken build leaves the live version alone, and no retrieval ever sees
two versions at once."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bootstrap import container
from app.knowledge import versions
from app.knowledge.service import ingest_paths
from app.models import Chunk, Document, PackVersion, Tenant
from tests.knowledge.test_ingest import FAQ, WARRANTY


class CountingEmbedder:
    """The real embedder, counting the document texts it is asked to embed."""

    def __init__(self) -> None:

        self.inner = container().embedder
        self.dim, self.name = self.inner.dim, self.inner.name
        self.texts = 0

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def _status(db: Session) -> dict[int, str]:
    db.expire_all()
    return {v.version: v.status for v in versions.list_versions(db, "acme")}


def test_reingesting_an_unchanged_pack_embeds_nothing(db: Session, pack: Path) -> None:
    embedder = CountingEmbedder()
    first = ingest_paths(db, "acme", [pack], deps=replace(container().knowledge, embedder=embedder))
    db.commit()
    # Every chunk once, plus each FAQ chunk's question view (app/knowledge/representation.py).
    assert embedder.texts > first.chunks == first.embedded > 0
    embedder.texts = 0
    second = ingest_paths(db, "acme", [pack], deps=replace(container().knowledge, embedder=embedder))
    db.commit()
    assert embedder.texts == 0 and second.embedded == 0 and second.chunks == first.chunks
    assert second.pack_version == 2 and second.promoted

    (pack / "warranty.txt").write_text(WARRANTY + "\n\nBoots carry a one-year warranty.")
    third = ingest_paths(db, "acme", [pack], deps=replace(container().knowledge, embedder=embedder))
    db.commit()
    warranty_chunks = db.scalars(select(Chunk).join(Document, Document.id == Chunk.document_id)
                                 .where(Document.pack_version == 3, Document.path == "warranty.txt"))
    assert embedder.texts == third.embedded == len(list(warranty_chunks))


def test_promote_and_rollback_switch_the_live_version(db: Session, pack: Path) -> None:
    ingest_paths(db, "acme", [pack], deps=container().knowledge)
    (pack / "faq.csv").write_text("question,answer\nDo you accept PayPal?,No longer: cards only.\n")
    built = ingest_paths(db, "acme", [pack / "faq.csv"], promote=False, deps=container().knowledge)
    db.commit()
    assert built.status == "ready" and not built.promoted and "version-only" in (built.notes or "")
    assert _status(db) == {1: "live", 2: "ready"} and db.get_one(Tenant, "acme").live_pack_version == 1

    versions.promote(db, "acme", 2, actor="test")
    db.commit()
    assert _status(db) == {1: "retired", 2: "live"} and db.get_one(Tenant, "acme").live_pack_version == 2
    live = container().retriever("acme", "paypal", filters={"pack_version": 2})
    assert live[0].text.endswith("No longer: cards only.")

    back = versions.rollback(db, "acme", actor="test")
    db.commit()
    assert back.version == 1 and _status(db) == {1: "live", 2: "ready"}
    assert db.get_one(Tenant, "acme").live_pack_version == 1
    with pytest.raises(versions.VersionError, match="no earlier live version"):
        versions.rollback(db, "acme")
    with pytest.raises(versions.VersionError, match="does not exist"):
        versions.promote(db, "acme", 9)


def test_a_build_where_every_file_is_broken_fails_and_the_live_version_stays(db: Session, pack: Path,
                                                                             tmp_path: Path) -> None:
    ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "faq.csv").write_text("q,a\nx,y\n")
    (broken / "manual.pdf").write_bytes(b"%PDF-1.4 truncated")
    report = ingest_paths(db, "acme", [broken], replace=True, deps=container().knowledge)
    db.commit()
    assert report.status == "failed" and not report.promoted and len(report.files_failed) == 2
    assert _status(db) == {1: "live", 2: "failed"} and db.get_one(Tenant, "acme").live_pack_version == 1
    assert container().retriever("acme", "can I pay with paypal", filters={"pack_version": 1})[0].document == "faq.csv"

    # Merge mode: a broken new copy of a file does not remove the good live copy.
    partial = ingest_paths(db, "acme", [broken / "faq.csv"], deps=container().knowledge)
    db.commit()
    assert partial.status == "live" and "faq.csv" in partial.files_carried
    assert container().retriever("acme", "can I pay with paypal", filters={"pack_version": 3})[0].document == "faq.csv"


def test_eval_gate_holds_back_a_regressing_version(db: Session, pack: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    questions = [
        {"question": "can I pay with paypal", "expected_document": "faq.csv"},
        {"question": "how long does delivery take", "expected_document": "shipping.md"},
        {"question": "I want a refund for unworn shoes", "expected_document": "returns.md"},
        {"question": "my zipper broke, is it covered", "expected_document": "warranty.txt"},
    ]
    (pack / "_eval.jsonl").write_text("\n".join(json.dumps(q) for q in questions))
    first = ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    assert first.promoted and first.scores["hit@5"] == 1.0 and first.scores["n"] == 4

    worse = tmp_path / "worse"
    worse.mkdir()
    (worse / "faq.csv").write_text(FAQ)
    (worse / "shipping.md").write_text("# Shipping\n\nAsk in store.\n")
    held = ingest_paths(db, "acme", [worse], replace=True, deps=container().knowledge)
    db.commit()
    assert held.status == "ready" and not held.promoted
    assert "not promoted: hit@5 0.500" in (held.notes or "") and held.scores["live"]["hit@5"] == 1.0
    assert db.get_one(Tenant, "acme").live_pack_version == 1
    row = db.scalars(select(PackVersion).where(PackVersion.version == 2)).one()
    assert row.notes == held.notes and row.scores["hit@5"] == 0.5

    from app.config import get_settings

    monkeypatch.setattr(get_settings(), "eval_regression_margin", 0.6)  # the operator allows a larger drop
    allowed = ingest_paths(db, "acme", [worse], replace=True, deps=container().knowledge)
    db.commit()
    assert allowed.promoted and db.get_one(Tenant, "acme").live_pack_version == 3


def test_metadata_from_front_matter_sidecar_and_upload_fields_filters_retrieval(db: Session, tmp_path: Path) -> None:
    root = tmp_path / "meta"
    root.mkdir()
    (root / "boots.md").write_text("---\ncategory: boots\nlanguage: en\n---\n# Boots\n\nOur boots are waterproof.\n")
    (root / "jackets.md").write_text("# Jackets\n\nOur jackets are waterproof too.\n")
    (root / "_metadata.json").write_text(json.dumps({"jackets.md": {"category": "jackets",
                                                                    "source_url": "https://x.test/j"}}))
    report = ingest_paths(db, "acme", [root], meta={"brand": "Acme", "category": "ignored-when-set"},
                          deps=container().knowledge)
    db.commit()
    assert sorted(report.files_ok) == ["boots.md", "jackets.md"]
    docs = {d.path: d.meta for d in db.scalars(select(Document))}
    assert docs["boots.md"] == {"brand": "Acme", "category": "boots", "language": "en"}
    assert docs["jackets.md"] == {"brand": "Acme", "category": "jackets", "source_url": "https://x.test/j"}
    boots = container().retriever("acme", "waterproof", filters={"category": "boots"})
    assert [p.document for p in boots] == ["boots.md"]
    assert {p.document for p in container().retriever("acme", "waterproof", filters={"brand": "Acme"})} == {"boots.md",
                                                                                                "jackets.md"}


def test_old_versions_are_pruned_beyond_the_kept_count(db: Session, pack: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    monkeypatch.setattr(get_settings(), "pack_versions_kept", 1)
    for _ in range(3):
        ingest_paths(db, "acme", [pack], deps=container().knowledge)
        db.commit()
    assert _status(db) == {1: "pruned", 2: "retired", 3: "live"}
    store = container().vector_store
    assert store.count("acme", {"pack_version": 1}) == 0 and store.count("acme", {"pack_version": 2}) > 0
    assert not list(db.scalars(select(Document).where(Document.pack_version == 1)))
    # The stored files are shared with the kept versions, so they stay.
    assert container().object_store.get("acme/knowledge/v1/faq.csv") == FAQ.encode()


def test_no_retrieval_mixes_versions_while_promoting_and_rolling_back(db: Session, pack: Path) -> None:
    """Readers do what the orchestrator does: read the live number once, retrieve filtered on it."""
    from app.db import get_sessionmaker

    ingest_paths(db, "acme", [pack], deps=container().knowledge)
    (pack / "faq.csv").write_text(FAQ.replace("PayPal", "PayPal and Klarna"))
    ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    version_of = {c.id: v for c, v in db.execute(select(Chunk, Document.pack_version)
                                                 .join(Document, Document.id == Chunk.document_id)).tuples()}
    seen: list[tuple[int, set[int]]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            with get_sessionmaker()(info={"cross_tenant": "tests"}) as session:
                while not stop.is_set():
                    session.expire_all()
                    live = session.get_one(Tenant, "acme").live_pack_version
                    assert live is not None
                    passages = container().retriever("acme", "can I pay with paypal", top_k=5,
                                                     filters={"pack_version": live})
                    seen.append((live, {version_of[p.chunk_id] for p in passages}))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(10):
            versions.rollback(db, "acme")
            db.commit()
            versions.promote(db, "acme", 2)
            db.commit()
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert seen and all(used == {live} for live, used in seen)


def test_an_answer_records_the_live_version_and_the_chunk_ids_it_used(sb_home: Path, pack: Path) -> None:
    """Through the whole embedded pipeline: the reply's meta and the audit event name the live version, and
    every cited chunk belongs to that version."""
    from app import operations
    from app.db import get_sessionmaker, migrate
    from app.models import AuditEvent, Message
    from app.workers_runtime import RoleThreads

    migrate()
    operations.create_tenant("shop")
    operations.ingest(container(), "shop", [pack])
    (pack / "faq.csv").write_text(FAQ.replace("PayPal, Visa", "PayPal, Klarna, Visa"))
    operations.ingest(container(), "shop", [pack])
    roles = RoleThreads.start_all(container())
    try:
        outcome = operations.chat(container(), "shop", "Do you accept PayPal?", timeout_s=120)
    finally:
        roles.stop()
    assert outcome["status"] == "answered" and outcome["citations"]
    with get_sessionmaker()(info={"cross_tenant": "tests"}) as db:
        tenant = db.scalars(select(Tenant).where(Tenant.slug == "shop")).one()
        assert tenant.live_pack_version == 2
        reply = db.scalars(select(Message).where(Message.in_reply_to_id == outcome["message_id"])).one()
        assert reply.meta["pack_version"] == 2
        audit = db.scalars(select(AuditEvent).where(AuditEvent.action == "message.answered")).one()
        assert audit.data["pack_version"] == 2
        cited = set(audit.data["chunk_ids"])
        assert cited == {c["chunk_id"] for c in outcome["citations"]}
        versions_of = set(db.scalars(select(Document.pack_version).join(Chunk, Chunk.document_id == Document.id)
                                     .where(Chunk.id.in_(cited))))
        assert versions_of == {2}

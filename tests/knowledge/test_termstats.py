"""Term statistics and the IDF-weighted query (app/knowledge/termstats.py) with the real MiniLM tokenizer and
model, and their life with pack versions in embedded mode (SQLite, qdrant-edge, local object store)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bootstrap import container
from app.knowledge import termstats
from app.knowledge.retrieval import retrieve
from app.knowledge.service import ingest_paths
from app.knowledge.termstats import TermStats, collect, query_vectors
from app.models import Chunk, Document, PackVersion
from app.providers.embeddings.minilm import MiniLMEmbedder
from tests.conftest import Graph
from tests.knowledge.test_ingest import FAQ

CORPUS = [
    "COVID-19 symptoms include fever, cough and tiredness.",
    "COVID-19 spreads through respiratory droplets between people.",
    "Testing for COVID-19 is free at public health centres.",
    "Stigma hurts: people of any origin can catch COVID-19.",
]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> MiniLMEmbedder:
    return MiniLMEmbedder(cache_dir=tmp_path_factory.mktemp("models"))


def test_tokens_are_the_models_wordpieces_without_special_tokens(embedder: MiniLMEmbedder) -> None:
    [ids, empty] = embedder.tokens(["Coronavirus stigma", ""])
    assert empty == []
    vocab = embedder._load().model.tokenizer
    assert [vocab.id_to_token(i) for i in ids] == ["corona", "##virus", "stigma"]


def test_collect_counts_in_how_many_chunks_each_token_occurs(embedder: MiniLMEmbedder) -> None:
    stats = collect(embedder, iter(CORPUS))
    assert stats is not None and stats.documents == 4 and stats.tokenizer == embedder.name
    [covid, stigma, never] = [embedder.tokens([w])[0][0] for w in ("covid", "stigma", "zebra")]
    assert stats.df[covid] == 4 and stats.df[stigma] == 1 and never not in stats.df
    assert stats.idf(covid) < stats.idf(stigma) < stats.idf(never)
    assert stats.idf(covid) == pytest.approx(math.log(1 + 0.5 / 4.5))
    assert TermStats.from_json(stats.to_json()) == stats
    assert collect(embedder, []) == TermStats(embedder.name, 0, {})


def test_equal_weights_give_the_plain_query_and_idf_weights_favour_rare_terms(embedder: MiniLMEmbedder) -> None:
    query = "Why is there stigma around covid?"
    plain, same = embedder.embed_query_weighted(query, lambda token: 1.0)
    assert plain == pytest.approx(embedder.embed_query(query), abs=1e-5)
    assert same == pytest.approx(plain, abs=1e-6)

    stats = collect(embedder, CORPUS)
    assert stats is not None
    plain, weighted = embedder.embed_query_weighted(query, stats.idf)
    assert plain == pytest.approx(embedder.embed_query(query), abs=1e-5)
    assert math.sqrt(sum(x * x for x in weighted)) == pytest.approx(1.0)
    docs = embedder.embed_documents(CORPUS)
    # The stigma passage pulls ahead of the others: "covid" is in every chunk, so it weighs least.
    lead = [cosine(q, docs[3]) - max(cosine(q, d) for d in docs[:3]) for q in (plain, weighted)]
    assert lead[1] > lead[0]


def test_the_plain_query_is_used_when_there_is_nothing_to_weight_with(embedder: MiniLMEmbedder) -> None:
    stats = collect(embedder, CORPUS)
    assert stats is not None
    plain = embedder.embed_query("stigma")

    class PlainEmbedder:  # an embedder that cannot weight tokens, e.g. one behind an API
        dim, name = embedder.dim, embedder.name

        def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
            return embedder.embed_documents(texts)

        def embed_query(self, text: str) -> list[float]:
            return embedder.embed_query(text)

    other_vocabulary = TermStats("another-model", stats.documents, stats.df)
    for used, given in ((embedder, None), (embedder, other_vocabulary), (embedder, TermStats(embedder.name, 0)),
                        (PlainEmbedder(), stats)):
        dense, weighted = query_vectors(used, "stigma", given)
        assert weighted is None and dense == pytest.approx(plain, abs=1e-6)
    assert collect(PlainEmbedder(), CORPUS) is None
    dense, weighted = query_vectors(embedder, "stigma", stats)
    assert weighted is not None and dense == pytest.approx(plain, abs=1e-6)


def test_a_build_records_its_statistics_and_retrieval_ranks_with_them(db: Session, pack: Path) -> None:

    report = ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    row = db.scalars(select(PackVersion).where(PackVersion.tenant_id == "acme")).one()
    chunks = list(db.scalars(select(Chunk).join(Document, Document.id == Chunk.document_id)
                             .where(Document.pack_version == report.pack_version)))
    assert row.term_stats and row.term_stats["documents"] == len(chunks) == report.chunks
    expected = collect(container().embedder,
                       [f"{c.heading}\n{c.text}" if c.heading else c.text for c in chunks])
    stats = termstats.for_version("acme", report.pack_version, container().embedder)
    assert stats == expected
    # Another tenant has no version 1 of its own, so it gets no statistics (and no one else's).
    assert termstats.for_version("globex", report.pack_version, container().embedder) is None

    # retrieve() with the live version ranks with that version's weighted query, and scores with the plain one.
    question = "is there a warranty on zippers"
    where = {"pack_version": report.pack_version}
    passages = container().retriever("acme", question, top_k=5, filters=where)
    plain, weighted = container().embedder.embed_query_weighted(question, stats.weight)
    hits = container().vector_store.search(
        "acme", plain, container().sparse_encoder.encode_query(question), limit=5, filters=where, rank_by=weighted
    )
    assert [p.chunk_id for p in passages] == [h.id for h in hits]
    assert [p.score for p in passages] == [h.score for h in hits]


def test_a_version_built_before_statistics_existed_gets_them_counted_from_its_chunks(
    db: Session, pack: Path
) -> None:

    report = ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    row = db.scalars(select(PackVersion).where(PackVersion.tenant_id == "acme")).one()
    recorded = TermStats.from_json(row.term_stats or {})
    row.term_stats = None  # as migration 0004 leaves older versions
    db.commit()
    termstats.clear_cache()
    assert termstats.for_version("acme", report.pack_version, container().embedder) == recorded
    db.refresh(row)
    assert row.term_stats is None  # counted in memory: a read never writes

    row.status = "building"  # a version still being built is not final: nothing is cached for it
    db.commit()
    termstats.clear_cache()
    assert termstats.for_version("acme", report.pack_version, container().embedder) is None


def test_each_tenants_version_has_its_own_statistics(db: Session, pack: Path, tmp_path: Path) -> None:

    other = tmp_path / "other"
    other.mkdir()
    (other / "faq.csv").write_text(FAQ)
    mine, theirs = ingest_paths(db, "acme", [pack], deps=container().knowledge), ingest_paths(db, "globex", [other],
                                                                                              deps=container().knowledge)
    db.commit()
    assert mine.pack_version == theirs.pack_version == 1
    embedder = container().embedder
    acme, globex = (termstats.for_version(t, 1, embedder) for t in ("acme", "globex"))
    assert acme is not None and globex is not None
    assert (acme.documents, globex.documents) == (mine.chunks, theirs.chunks) and acme != globex
    # From the cache now, and still each its own.
    assert termstats.for_version("globex", 1, embedder) is globex
    assert termstats.for_version("acme", 1, embedder) is acme


def test_retrieval_ranks_with_the_plain_query_when_statistics_cannot_be_read(
    graph: Graph, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database outage costs the ranking refinement, not the answer."""
    from app.providers.embeddings.sparse import TermFrequencyEncoder
    from app.providers.vectors.base import ChunkPoint
    from app.providers.vectors.edge import EdgeVectorStore

    graph.configure(database_url="postgresql+psycopg://127.0.0.1:1/nowhere?connect_timeout=2")
    embedder = container().embedder
    store = EdgeVectorStore(tmp_path / "vectors", dim=embedder.dim)
    try:
        texts = ["Refunds take five days.", "We ship to Canada."]
        store.upsert("acme", [
            ChunkPoint(f"00000000-0000-0000-0000-00000000000{i}", "acme", v, TermFrequencyEncoder().encode_document(t),
                       {"document": f"d{i}", "text": t, "pack_version": 1})
            for i, (t, v) in enumerate(zip(texts, embedder.embed_documents(texts), strict=True))
        ])
        passages = retrieve("acme", "how long do refunds take", filters={"pack_version": 1}, vector_store=store,
                            embedder=container().embedder,
                              sparse_encoder=container().sparse_encoder)
    finally:
        store.close()
    assert [p.document for p in passages] == ["d0", "d1"]
    assert "term statistics of pack version 1 unavailable" in caplog.text


def test_the_cache_is_bounded_by_bytes_so_many_small_tenants_all_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process answering a thousand tenants with small packs keeps every tenant's statistics (a bound of 256
    entries re-read and re-parsed one on each message past the 256th tenant); large ones go, least recently used
    first, once the cache is over its bytes."""
    termstats.clear_cache()
    try:
        def stats(tokens: int) -> termstats.TermStats:
            return termstats.TermStats("minilm", 10, termstats.Counts({t: 1 for t in range(tokens)}))

        for n in range(1000):
            termstats._keep((None, f"tenant{n}", 1, "minilm"), stats(300))
        assert len(termstats._cache) == 1000

        one_large = termstats._size(stats(30_000))
        monkeypatch.setattr(termstats, "CACHE_BYTES", termstats._cached_bytes + one_large)
        termstats._keep((None, "large-1", 1, "minilm"), stats(30_000))
        assert len(termstats._cache) == 1001  # fits the budget exactly
        termstats._keep((None, "large-2", 1, "minilm"), stats(30_000))
        kept = [key[1] for key in termstats._cache]
        assert kept[-2:] == ["large-1", "large-2"] and "tenant0" not in kept  # the oldest went
        assert termstats._cached_bytes == sum(termstats._size(s) for s in termstats._cache.values())
        assert termstats._cached_bytes <= termstats.CACHE_BYTES
    finally:
        termstats.clear_cache()
